"""The demo's required extras, matplotlib and scikit-learn, with the install command when one is missing.

tqdm is optional (adaptx_demo.progress prints plain lines without it), so it is not checked here.
"""
import importlib.util

INSTALL = 'pip install "adaptx[demo]"'

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
except ImportError as error:
    missing = (error.name or "matplotlib").split(".")[0]
    raise ImportError(
        f"the adaptx demo needs matplotlib and scikit-learn, and {missing} is not installed;"
        f" install them with:  {INSTALL}"
    ) from error
# scikit-learn is imported only when the digits load (it takes a second or two); checking
# here that it is installed fails at once instead of after the sections before the digits.
if importlib.util.find_spec("sklearn") is None:
    raise ImportError(
        "the adaptx demo needs matplotlib and scikit-learn, and scikit-learn is not installed;"
        f" install them with:  {INSTALL}"
    )

__all__ = ["INSTALL", "LogNorm", "colormaps", "new_figure", "save_figure"]


def new_figure(**kwargs) -> Figure:
    """A figure rendered by the Agg backend, leaving pyplot's global backend to the user."""
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path, dpi: int = 110) -> None:
    # zlib level 1 instead of 6: PNG encoding was a fifth of drawing a figure, for files ~1.5× smaller.
    figure.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
