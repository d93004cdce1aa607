"""Figures for the optimizer-paths section: paths over contours, and loss curves."""
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from adaptx_demo._extras import colormaps, grid_figure, new_figure, save_figure, suptitle
from adaptx_demo.problems import Problem


def _styles(names):
    """``{name: (colour, line style)}``: tab10's strong colours (tab20's pale half vanishes against
    the blue contours), cycled, with a new line style per cycle so shared panels tell them apart."""
    palette = colormaps["tab10"].colors
    dashes = ("-", "--", ":")
    return {name: (palette[i % len(palette)], dashes[i // len(palette) % len(dashes)]) for i, name in enumerate(names)}


def plot_paths(problem: Problem, results: dict, path: Path) -> None:
    """One panel per optimizer: its path over the loss's contours, spaced and coloured on a log scale.

    Coloured contour lines, not a shaded image under them: resampling an image into
    every panel was a third of the figure's drawing time.
    """
    columns = 3
    rows = -(-len(results) // columns)
    figure, panels = grid_figure(rows, columns, panel=(3.9, 2.9), margins=(0.75, 0.2, 0.6, 0.5), gaps=(0.3, 0.4),
                                 sharex=True, sharey=True)
    panels = panels.ravel()
    x, y, z = problem.grid(200)
    levels = np.geomspace(max(z.min(), 1e-3), z.max(), 16)
    # Dark blue at the minimum to mid blue far out: Blues' palest quarter vanished on white.
    contour_colours = colormaps["Blues_r"](np.linspace(0.0, 0.7, len(levels)))
    colours = {name: colour for name, (colour, _) in _styles(results).items()}
    for axes, (name, best) in zip(panels, results.items()):
        axes.contour(x, y, z, levels=levels, colors=contour_colours, linewidths=0.7)
        axes.plot(*best.path.T, color=colours[name], lw=1.4, marker=".", ms=3,
                  markevery=max(1, len(best.path) // 100))
        axes.plot(*problem.start, "o", color="black", ms=5, label="start")
        axes.plot(*best.path[-1], "s", color=colours[name], mec="black", ms=5, label="end")
        axes.plot(*problem.minimum, "*", color="red", ms=11, label="minimum")
        axes.set_title(f"{name}: η = {best.learning_rate:.3g}, final loss {best.losses[-1]:.2g}", fontsize=10)
        axes.set(xlim=problem.xlim, ylim=problem.ylim)
    # Shared x axes side by side: a tick at each end would print "2.0−2.0" where the panels meet.
    panels[0].xaxis.set_major_locator(MaxNLocator(nbins=8, prune="both"))
    for axes in panels[len(results):]:
        axes.set_visible(False)
    for axes in panels[-columns:]:
        axes.set_xlabel("x")
    for axes in panels[::columns]:
        axes.set_ylabel("y")
    panels[0].legend(loc="lower right", fontsize=8)
    suptitle(figure, f"{problem.title}: {problem.formula}, {problem.steps} steps, tuned η per optimizer")
    save_figure(figure, path)


# Losses reach exactly 0 in float32 (log(0) = -inf falls off a log axis): they are drawn at this floor.
LOSS_FLOOR = 1e-15


def plot_losses(problems, names, results: dict, path: Path) -> None:
    """Loss per step, log scale, one panel per problem; losses below LOSS_FLOOR drawn at the floor."""
    figure = new_figure(figsize=(13.5, 5.6))
    styles = _styles(names)
    for axes, problem in zip(figure.subplots(1, len(problems), squeeze=False).ravel(), problems):
        clipped = False
        for name in names:
            best = results[problem.name, name]
            with np.errstate(invalid="ignore"):
                low = best.losses < LOSS_FLOOR
            clipped |= bool(low.any())
            colour, style = styles[name]
            axes.plot(np.where(low, LOSS_FLOOR, best.losses), color=colour, ls=style, lw=1.3,
                      label=f"{name} (η = {best.learning_rate:.3g})")
        if clipped:
            axes.axhline(LOSS_FLOOR, color="0.4", lw=0.8, ls=":")
            axes.annotate(f"floor: losses below {LOSS_FLOOR:g} (exactly 0 in float32) drawn here",
                          (0.01, LOSS_FLOOR), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                          fontsize=8, color="0.3")
        axes.set(yscale="log", xlabel="step", ylabel="loss", title=f"{problem.title}: {problem.formula}")
        axes.grid(alpha=0.3, which="both")
        # Below the panel: inside it, the legend hid the curves' ends and the floor's label.
        axes.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    figure.suptitle("Loss per step with each optimizer's tuned learning rate")
    save_figure(figure, path)
