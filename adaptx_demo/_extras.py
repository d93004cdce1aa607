"""matplotlib, for the demo's plotting modules (which import this when they first plot).

A missing extra is reported by :mod:`adaptx_demo._requires` before anything runs;
importing this module without matplotlib raises the same one-line message.
"""
from adaptx_demo._requires import INSTALL, missing_message

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
except ImportError as error:
    raise ImportError(missing_message("matplotlib", "matplotlib")) from error

__all__ = ["INSTALL", "LogNorm", "colormaps", "new_figure", "save_figure"]


def new_figure(**kwargs) -> Figure:
    """A figure rendered by the Agg backend, leaving pyplot's global backend to the user."""
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path, dpi: int = 110) -> None:
    # zlib level 1 instead of 6: PNG encoding was a fifth of drawing a figure, for files ~1.5× smaller.
    figure.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
