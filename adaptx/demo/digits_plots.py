"""The digits section's figures: learning curves, effective learning rates, the sweep heatmap."""
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

COLORS = plt.get_cmap("tab10").colors
LAYER_STYLES = {"w": "-", "b": ":"}


def curves(runs: list, path: pathlib.Path) -> None:
    """Loss (train and test) and test accuracy of each optimizer at its best learning rate."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for run, color in zip(runs, COLORS):
        label = f"{run.name} (η = {run.learning_rate:.2g})"
        steps = run.record_steps
        loss_ax.plot(steps, run.at_best("train_loss"), color=color, label=label)
        loss_ax.plot(steps, run.at_best("test_loss"), color=color, ls="--", lw=1)
        acc_ax.plot(steps, run.at_best("test_acc"), color=color, label=label)
    loss_ax.set(yscale="log", xlabel="step", ylabel="cross-entropy",
                title="Loss (solid: running train mean, dashed: test)")
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0.8, 1.0), title="Test accuracy")
    acc_ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right", fontsize=9)
    fig.suptitle("MLP on scikit-learn digits, each optimizer at its best learning rate")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def effective_rates(runs: list, path: pathlib.Path) -> None:
    """One panel per optimizer: each layer's ‖update‖ / ‖gradient‖, relative to η, over the steps."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True, sharey=True, constrained_layout=True)
    for run, ax in zip(runs, axes.flat):
        rates = run.at_best("rate")
        for i, layer in enumerate(sorted(rates)):
            for kind, style in LAYER_STYLES.items():
                ax.plot(run.record_steps, rates[layer][kind] / run.learning_rate, color=COLORS[i], ls=style,
                        label=f"{layer} {'weights' if kind == 'w' else 'biases'}")
        ax.axhline(1.0, color="gray", lw=1, ls="--", label="η (plain SGD)")
        ax.set(yscale="log", title=f"{run.name} (η = {run.learning_rate:.2g})")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("effective rate / η")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("Effective learning rate per layer: ‖update‖ / ‖gradient‖, the gradient²-weighted RMS"
                 " of |update| / |gradient| (adaptx.monitor)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_heatmap(runs: list, learning_rates: np.ndarray, path: pathlib.Path) -> None:
    """Final test accuracy for every optimizer × learning rate; diverged runs crossed out."""
    accuracy = np.array([run.records["test_acc"][:, -1] for run in runs])
    diverged = ~np.isfinite(np.array([run.final["loss"] for run in runs]))
    fig, ax = plt.subplots(figsize=(13, 4.2), constrained_layout=True)
    image = ax.imshow(np.ma.masked_array(accuracy, diverged), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_facecolor("0.85")
    for (row, col), value in np.ndenumerate(accuracy):
        text = "×" if diverged[row, col] else f"{value:.0%}"
        ax.text(col, row, text, ha="center", va="center", fontsize=8,
                color="0.3" if diverged[row, col] else ("black" if value > 0.6 else "white"))
    for row, run in enumerate(runs):
        ax.add_patch(plt.Rectangle((run.best - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(learning_rates)), [f"{lr:.1e}" for lr in learning_rates], rotation=45, ha="right")
    ax.set_yticks(range(len(runs)), [run.name for run in runs])
    ax.set(xlabel="learning rate", title="Final test accuracy per learning rate (one vmapped sweep per"
           " optimizer; red: lowest training loss, ×: diverged)")
    fig.colorbar(image, ax=ax, format=matplotlib.ticker.PercentFormatter(1.0), label="test accuracy")
    fig.savefig(path, dpi=110)
    plt.close(fig)
