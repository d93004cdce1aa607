"""Demo section: six optimizers train an MLP on real handwritten digits.

Each optimizer's 16 learning rates run as one vmapped program
(:func:`adaptx.sweep`) with :func:`adaptx.monitor` recording each layer's
effective learning rate ‖update‖ / ‖gradient‖ (norms only: the per-coordinate
statistics would double the run); the curves are the sweep's records at each
optimizer's best learning rate.
"""
import concurrent.futures
import dataclasses
import pathlib

import jax
import numpy as np

import adaptx
from adaptx import digits

OPTIMIZERS = {
    "sgd": adaptx.sgd,
    "sgd+momentum": lambda learning_rate: adaptx.sgd(learning_rate, momentum=0.9),
    "adagrad": adaptx.adagrad,
    "rmsprop": adaptx.rmsprop,
    "adam": adaptx.adam,
    "adamw": adaptx.adamw,
    # the adaptive family (issue 13), rprop aside (full-batch, and its Δ₀ is not sweepable state)
    "radam": adaptx.radam,
    "adabelief": adaptx.adabelief,
    "yogi": adaptx.yogi,
    "lion": adaptx.lion,
    "lamb": adaptx.lamb,
    "nadamw": adaptx.nadamw,
    "adamaxw": adaptx.adamaxw,
    "novograd": adaptx.novograd,
    "adan": adaptx.adan,
    "adopt": adaptx.adopt,
    "ademamix": adaptx.ademamix,
    "schedule_free_adamw": adaptx.schedule_free_adamw,
    "prodigy": lambda learning_rate: adaptx.prodigy(learning_rate),  # a multiplier on the estimated d
}
LEARNING_RATES = np.logspace(-4, 1, 16)  # three per decade
BATCH_SIZE = 64
FILES = ("digits_curves.png", "digits_effective_lr.png", "digits_lr_sweep.png")


@dataclasses.dataclass
class Run:
    """One optimizer's sweep, reduced to what the figures show."""

    name: str
    records: dict  # name -> arrays (learning rates, records, ...), or trees of them
    record_steps: np.ndarray
    final: dict  # full-training-set loss and accuracy of each learning rate's final params

    @property
    def best(self) -> int:
        """Index of the learning rate with the lowest final training loss."""
        return int(np.nanargmin(np.where(np.isfinite(self.final["loss"]), self.final["loss"], np.nan)))

    @property
    def learning_rate(self) -> float:
        return float(LEARNING_RATES[self.best])

    def at_best(self, key):
        return jax.tree.map(lambda x: x[self.best], self.records[key])


def run_all(data: digits.Split, steps: int, record_every: int, progress: bool) -> list:
    """Sweep every optimizer over LEARNING_RATES, recording test metrics and effective rates."""
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)

    def observe(params, state):
        return {
            "test_loss": digits.cross_entropy(params, test),
            "test_acc": digits.accuracy(params, test),
            "rate": adaptx.monitor_stats(state)["norm_ratio"],
        }

    @jax.jit
    @jax.vmap
    def evaluate(params):
        return {"loss": digits.cross_entropy(params, train), "acc": digits.accuracy(params, train)}

    params = digits.init_mlp()
    schedule = digits.batch_schedule(len(data.y_train), steps, BATCH_SIZE)

    def sweep(name):
        result = adaptx.sweep(
            digits.cross_entropy, adaptx.monitor(OPTIMIZERS[name](learning_rate=1e-3), per_coordinate=False),
            params, (train, schedule), {"learning_rate": list(LEARNING_RATES)}, steps=steps,
            batch_fn=digits.minibatch, record=observe, record_every=record_every,
            progress=progress and f"digits {name:>12}",
        )
        # The running training loss: the mean over the minibatches since the last record.
        running = result.losses.reshape(len(result), -1, record_every).mean(axis=2)
        records = {**result.records, "train_loss": running}
        return Run(name, records, result.record_steps, jax.device_get(evaluate(result.params)))

    # Compiling is most of a quick run, and XLA compiles two programs at once on two threads.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(sweep, OPTIMIZERS))


WORK = 1  # the six sweeps run side by side, so the bar advances once at the end


def section(out_dir: pathlib.Path, progress=None, quick: bool = False) -> str:
    """Train, plot into ``out_dir`` and return the report's markdown (PNG links relative to it).

    ``progress``: the demo's tqdm bar, advanced by :data:`WORK` (None: a bar per optimizer).
    """
    from adaptx.demo import digits_plots as plots

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps, record_every = (150, 10) if quick else (600, 20)
    data = digits.load()
    runs = run_all(data, steps, record_every, progress is None)
    plots.curves(runs, out_dir / FILES[0])
    plots.effective_rates(runs, out_dir / FILES[1])
    plots.sweep_heatmap(runs, LEARNING_RATES, out_dir / FILES[2])
    if progress is not None:
        progress.update(WORK)
    return _markdown(runs, data, steps)


def _markdown(runs: list, data: digits.Split, steps: int) -> str:
    rows = []
    for run in runs:
        rate = run.at_best("rate")["layer1"]["w"] / run.learning_rate
        rows.append(
            f"| {run.name} | {run.learning_rate:.2g} | {run.final['loss'][run.best]:.3f}"
            f" | {run.final['acc'][run.best]:.1%} | {run.at_best('test_acc')[-1]:.1%}"
            f" | {rate[0]:.3g} → {rate[-1]:.3g} |"
        )
    return "\n".join([
        "## Real data: handwritten digits",
        "",
        f"A 64-64-10 tanh MLP on scikit-learn's 8×8 digits ({len(data.y_train)} training,"
        f" {len(data.y_test)} test images), {steps} steps of minibatches of {BATCH_SIZE}."
        f" Each optimizer's {len(LEARNING_RATES)} learning rates ({LEARNING_RATES[0]:g} to"
        f" {LEARNING_RATES[-1]:g}) ran as one vmapped program (`adaptx.sweep`) with"
        " `adaptx.monitor` recording each layer's effective learning rate ‖update‖ / ‖gradient‖. The table"
        " and curves show each optimizer at the learning rate with the lowest final training loss;"
        " the last column is the first layer's ‖update‖ / ‖gradient‖ relative to η at steps"
        f" {runs[0].record_steps[0]} and {steps}.",
        "",
        "| optimizer | best η | train loss | train accuracy | test accuracy | layer-1 rate / η |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"![loss and accuracy]({FILES[0]})",
        "",
        "Per-layer effective learning rate relative to η: constant for SGD, shrinking for Adagrad"
        " (its accumulator only grows), adapting without vanishing for RMSProp and Adam.",
        "",
        f"![effective learning rates]({FILES[1]})",
        "",
        f"![learning-rate sweep]({FILES[2]})",
        "",
    ])

