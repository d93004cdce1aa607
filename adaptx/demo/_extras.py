"""The demo's optional dependencies, matplotlib and tqdm, with the install command when one is missing."""
try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from tqdm import tqdm
except ImportError as error:
    missing = (error.name or "matplotlib").split(".")[0]
    raise ImportError(
        f"the adaptx demo needs matplotlib and tqdm, and {missing} is not installed;"
        ' install them with:  pip install "adaptx[demo]"'
    ) from error

__all__ = ["LogNorm", "colormaps", "new_figure", "save_figure", "tqdm"]


def new_figure(**kwargs) -> Figure:
    """A figure rendered by the Agg backend, leaving pyplot's global backend to the user."""
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path) -> None:
    figure.savefig(path, dpi=120)
