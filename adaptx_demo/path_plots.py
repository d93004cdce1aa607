"""Figures for the optimizer-paths section: paths over contours, and loss curves."""
from pathlib import Path

import numpy as np

from adaptx_demo._extras import LogNorm, colormaps, new_figure, save_figure
from adaptx_demo.problems import Problem


def _colours(names):
    palette = colormaps["tab10"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def plot_paths(problem: Problem, results: dict, path: Path) -> None:
    """One panel per optimizer: its path over the loss, shaded and contoured on a log scale."""
    columns = 3
    rows = -(-len(results) // columns)
    figure = new_figure(figsize=(4.2 * columns, 3.4 * rows))
    panels = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    x, y, z = problem.grid(200)
    levels = np.geomspace(max(z.min(), 1e-3), z.max(), 16)
    norm = LogNorm(levels[0], levels[-1])
    colours = _colours(results)
    for axes, (name, best) in zip(panels, results.items()):
        axes.imshow(z, extent=(*problem.xlim, *problem.ylim), origin="lower", aspect="auto",
                    norm=norm, cmap="Blues_r", alpha=0.45)
        axes.contour(x, y, z, levels=levels, colors="0.5", linewidths=0.4)
        axes.plot(*best.path.T, color=colours[name], lw=1.4, marker=".", ms=3,
                  markevery=max(1, len(best.path) // 100))
        axes.plot(*problem.start, "o", color="black", ms=5, label="start")
        axes.plot(*best.path[-1], "s", color=colours[name], mec="black", ms=5, label="end")
        axes.plot(*problem.minimum, "*", color="red", ms=11, label="minimum")
        axes.set_title(f"{name}: η = {best.learning_rate:.3g}, final loss {best.losses[-1]:.2g}", fontsize=10)
        axes.set(xlim=problem.xlim, ylim=problem.ylim)
    for axes in panels[len(results):]:
        axes.set_visible(False)
    for axes in panels[-columns:]:
        axes.set_xlabel("x")
    for axes in panels[::columns]:
        axes.set_ylabel("y")
    panels[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{problem.title}: {problem.formula}, {problem.steps} steps, tuned η per optimizer")
    save_figure(figure, path)


def plot_losses(problems, names, results: dict, path: Path) -> None:
    """Loss per step, log scale, one panel per problem."""
    figure = new_figure(figsize=(12, 4.5))
    colours = _colours(names)
    for axes, problem in zip(figure.subplots(1, len(problems), squeeze=False).ravel(), problems):
        for name in names:
            best = results[problem.name, name]
            axes.plot(best.losses, color=colours[name], lw=1.3, label=f"{name} (η = {best.learning_rate:.3g})")
        axes.set(yscale="log", xlabel="step", ylabel="loss", title=f"{problem.title}: {problem.formula}")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8, ncols=2)
    figure.suptitle("Loss per step with each optimizer's tuned learning rate")
    save_figure(figure, path)
