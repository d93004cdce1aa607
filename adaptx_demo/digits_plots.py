"""The digits section's figures: learning curves, effective learning rates, the sweep heatmap.

Every quantity is the one the section's table reports, under the same name: the
loss and accuracy on the full training and test sets at the recorded steps (the
table's numbers are the curves' last points), and ‖update‖ / ‖gradient‖ per layer.
"""
import pathlib

import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import PercentFormatter

from adaptx_demo import verdicts
from adaptx_demo.optimizer_paths import FAMILY
from adaptx_demo._extras import colormaps, grid_figure, new_figure, save_figure, suptitle

COLORS = colormaps["tab10"].colors
LAYER_STYLES = {"w": "-", "b": ":"}
# A loss plotted on a log axis is clipped to this floor (an exact 0 would fall off the axis);
# the figure says so when it happens.
LOSS_FLOOR = 1e-6


def clip_to_floor(values: np.ndarray, floor: float):
    """``values`` with everything below ``floor`` (including 0) raised to it, and whether any was."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        low = values < floor
    return np.where(low, floor, values), bool(low.any())


def curves(runs: list, learning_rates: np.ndarray, path: pathlib.Path) -> None:
    """Loss and accuracy on the full training set (solid) and the test set (dashed), best η each.

    The seeds' optimizers in the first row, the adaptive family (full run) in a second: nineteen
    curves on one panel could not be told apart.
    """
    groups = [group for group in ([r for r in runs if r.name not in FAMILY], [r for r in runs if r.name in FAMILY])
              if group]
    figure, axes = grid_figure(len(groups), 2, panel=(5.6, 3.6), margins=(0.8, 2.8, 0.75, 0.6), gaps=(0.8, 0.7))
    clipped = False
    for group, (loss_ax, acc_ax) in zip(groups, axes):
        colors = COLORS if len(group) <= len(COLORS) else colormaps["tab20"].colors
        for run, color in zip(group, colors):
            label = f"{run.name} (η = {run.learning_rate:.2g})"
            steps = run.record_steps
            for key, style in (("train", "-"), ("test", "--")):
                loss, low = clip_to_floor(run.at_best(f"{key}_loss"), LOSS_FLOOR)
                clipped |= low
                width = 1.4 if key == "train" else 1
                loss_ax.plot(steps, loss, color=color, ls=style, lw=width, label=label if key == "train" else None)
                acc_ax.plot(steps, run.at_best(f"{key}_acc"), color=color, ls=style, lw=width)
        acc_ax.axhline(verdicts.CHANCE_ACCURACY, color="gray", lw=1, ls=":")
        acc_ax.annotate("chance (10 %)", (steps[-1], verdicts.CHANCE_ACCURACY), ha="right", va="bottom",
                        fontsize=8, color="gray")
        acc_ax.set(ylabel="accuracy", ylim=(0, 1.02))
        acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        loss_ax.set(yscale="log")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.set_xlim(0, steps[-1])
        acc_ax.legend(*loss_ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.02, 0.5),
                      fontsize=8)
    floor_note = f"; below {LOSS_FLOOR:g} drawn at {LOSS_FLOOR:g}" if clipped else ""
    for loss_ax in axes[:, 0]:
        loss_ax.set_ylabel("cross-entropy" + floor_note)
    axes[0, 0].set_title("Loss (solid: train loss, full training set; dashed: test loss)")
    axes[0, 1].set_title("Accuracy (solid: train accuracy; dashed: test accuracy)")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    suptitle(figure, "MLP on scikit-learn digits, each optimizer at its best learning rate"
                     " (the table's numbers are these curves' last points)")
    save_figure(figure, path)


def first_rate(rate: np.ndarray) -> float:
    """The first positive rate: step 1's, except where a method's first update is 0 by design
    (ADOPT only initialises its second moment then)."""
    positive = rate[np.isfinite(rate) & (rate > 0)]
    return float(positive[0]) if positive.size else np.nan


def effective_rates(runs: list, learning_rates: np.ndarray, path: pathlib.Path) -> None:
    """One panel per optimizer: each layer's ‖update‖ / ‖gradient‖ relative to its value at step 1.

    Relative to step 1, on log axes, so that Adagrad's shrinking (about 1/√t once its
    accumulator is dominated by the past) is a falling line and SGD's constant rate is flat at 1;
    the absolute rates ÷ η at steps 1 and T are in the table.
    """
    columns = 3
    rows = -(-len(runs) // columns)
    figure, axes = grid_figure(rows, columns, panel=(3.9, 2.8), margins=(0.75, 0.15, 0.95, 0.95), gaps=(0.15, 0.45),
                               sharex=True, sharey=True)
    for run, ax in zip(runs, axes.flat):
        rates = run.at_best("rate")
        steps = np.arange(1, len(next(iter(rates.values()))["w"]) + 1)
        for i, layer in enumerate(sorted(rates)):
            for kind, style in LAYER_STYLES.items():
                rate = np.asarray(rates[layer][kind], np.float64)
                # ADOPT's zero first update has no rate to draw on a log axis: a gap, not a drop.
                ax.plot(steps, np.where(rate > 0, rate, np.nan) / first_rate(rate), color=COLORS[i], ls=style,
                        label=f"{layer} {'weights' if kind == 'w' else 'biases'}")
        ax.axhline(1.0, color="gray", lw=1, ls="--", label="rate at step 1 (SGD: always)")
        ax.set(xscale="log", yscale="log", title=f"{run.name} (η = {run.learning_rate:.2g})")
        ax.grid(alpha=0.3, which="major")
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("rate at step t / rate at step 1")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    later = " (ADOPT: its first nonzero one, at step 2)" if any(run.name == "adopt" for run in runs) else ""
    suptitle(figure, "Effective learning rate per layer, ‖update‖ / ‖gradient‖ (adaptx.monitor), relative to its"
                     f" value at step 1{later}\nflat for SGD, falling for Adagrad (its accumulator only grows),"
                     " rising with momentum")
    save_figure(figure, path)


def sweep_heatmap(runs: list, learning_rates: np.ndarray, path: pathlib.Path) -> None:
    """Final test accuracy for every optimizer × learning rate; diverged and chance-level runs marked."""
    accuracy = np.array([run.metrics["test_acc"][:, -1] for run in runs], np.float64)
    verdict = np.array([run.verdicts for run in runs])
    diverged, chance = verdict == verdicts.DIVERGED, verdict == verdicts.CHANCE
    figure = new_figure(figsize=(13, 1.6 + 0.45 * len(runs)))
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_array(accuracy, diverged), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_facecolor("0.35")  # diverged cells are masked: dark grey behind a white ×
    for (row, col), value in np.ndenumerate(accuracy):
        if diverged[row, col]:
            ax.text(col, row, "×", ha="center", va="center", fontsize=13, color="white")
            continue
        if chance[row, col]:
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="////", ec="0.75", lw=0))
        ax.text(col, row, f"{value:.0%}", ha="center", va="center", fontsize=8,
                color="black" if value > 0.6 else "white")
    for row, run in enumerate(runs):
        ax.add_patch(Rectangle((run.best - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(learning_rates)), [f"{lr:.2g}" for lr in learning_rates], rotation=45, ha="right")
    ax.set_yticks(range(len(runs)), [run.name for run in runs])
    marks = [f"hatched: at chance level ({chance.sum()} runs)" if chance.any() else "no run at chance level",
             f"×: diverged ({diverged.sum()} runs)" if diverged.any() else "no run diverged"]
    ax.set(xlabel="learning rate η",
           title="Final test accuracy per learning rate (red: best, the lowest final train loss among runs that"
                 f" learned)\n{'; '.join(marks)}")
    figure.colorbar(image, ax=ax, format=PercentFormatter(1.0), label="test accuracy", pad=0.01)
    figure.supxlabel(verdicts.DEFINITION[0].upper() + verdicts.DEFINITION[1:] + ".", fontsize=8)
    save_figure(figure, path)
