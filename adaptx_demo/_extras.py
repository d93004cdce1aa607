"""matplotlib, for the demo's plotting modules (which import this when they first plot).

A missing extra is reported by :mod:`adaptx_demo._requires` before anything runs;
importing this module without matplotlib raises the same one-line message.
"""
from adaptx_demo._requires import INSTALL, missing_message

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as error:
    raise ImportError(missing_message("matplotlib", "matplotlib")) from error

__all__ = ["INSTALL", "colormaps", "grid_figure", "new_figure", "save_figure", "suptitle"]


def new_figure(**kwargs) -> Figure:
    """A figure rendered by the Agg backend, leaving pyplot's global backend to the user."""
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def grid_figure(rows: int, columns: int, panel=(4.2, 3.4), margins=(0.7, 0.15, 0.75, 0.6), gaps=(0.35, 0.55),
                **subplot_kw):
    """A figure of ``rows × columns`` panels of ``panel`` inches, laid out with fixed margins.

    ``margins`` (left, right, top, bottom) and ``gaps`` (between columns, rows) are in
    inches, so that titles and labels fit however many rows there are. Fixed, not
    constrained layout: on these many-panel figures the layout engine took 40 % of the drawing.
    Returns the figure and a (rows, columns) array of axes.
    """
    left, right, top, bottom = margins
    width = left + right + columns * panel[0] + (columns - 1) * gaps[0]
    height = top + bottom + rows * panel[1] + (rows - 1) * gaps[1]
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        wspace=gaps[0] / panel[0], hspace=gaps[1] / panel[1],
    ), **subplot_kw)
    return figure, axes


def suptitle(figure: Figure, text: str) -> None:
    """A figure title a fixed distance below the top edge, inside :func:`grid_figure`'s top margin,
    however tall the figure (matplotlib's default sits a fixed *fraction* down, into the panels)."""
    figure.suptitle(text, y=1 - 0.08 / figure.get_figheight(), va="top")


def save_figure(figure: Figure, path, dpi: int = 110) -> None:
    # zlib level 1 instead of 6: PNG encoding was a fifth of drawing a figure, for files ~1.5× smaller.
    figure.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
