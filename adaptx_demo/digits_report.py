"""Demo section: six optimizers train an MLP on real handwritten digits.

Every optimizer's 16 learning rates run in one compiled program: per optimizer
a ``jax.vmap`` over ``adaptx.set_hyperparams``, each run a ``jax.lax.scan``
over the steps, with :func:`adaptx.monitor` recording each layer's effective
learning rate ‖update‖ / ‖gradient‖ at every step (norms only: the
per-coordinate statistics would double the run) and the full training and test
sets' loss and accuracy recorded every ``record_every`` steps. One program
instead of one per optimizer halves the CPU time XLA spends compiling, which is
most of a ``--quick`` run. The curves are those records at each optimizer's best
learning rate, and the table's final numbers are their last points.
"""
import concurrent.futures
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import descent, digits, markdown, optimizer_paths, verdicts

OPTIMIZERS = {
    "sgd": adaptx.sgd,
    "sgd+momentum": lambda learning_rate: adaptx.sgd(learning_rate, momentum=0.9),
    "adagrad": adaptx.adagrad,
    "rmsprop": adaptx.rmsprop,
    "adam": adaptx.adam,
    "adamw": adaptx.adamw,
}

# The adaptive family as in the paths section; --quick keeps the seeds' optimizers above.
FAMILY = optimizer_paths.FAMILY


def optimizers(quick: bool) -> dict:
    """The optimizers a run shows: the seeds' with ``quick``, every one otherwise."""
    return OPTIMIZERS if quick else {**OPTIMIZERS, **FAMILY}


LEARNING_RATES = np.logspace(-4, 1, 16)  # three per decade
# --quick: every other learning rate and fewer records halve the run; compiling costs the same.
QUICK_LEARNING_RATES = LEARNING_RATES[::2]
BATCH_SIZE = 64
STEPS = {False: (600, 20), True: (150, 25)}  # quick -> (steps, record_every)
# The digits program is big enough that XLA's level-1 backend optimizations compile and run it
# faster than the default level 2 (and level 0, descent's default, runs it 4× slower).
COMPILE_OPTIONS = {"xla_backend_optimization_level": 1}
FILES = ("digits_curves.png", "digits_effective_lr.png", "digits_lr_sweep.png")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclasses.dataclass
class Run:
    """One optimizer's sweep over LEARNING_RATES, as host arrays with a leading learning-rate axis."""

    name: str
    learning_rates: np.ndarray
    metrics: dict  # METRICS -> (learning rates, records): full-set values at record_steps
    rates: dict  # {"layer1": {"w": (learning rates, steps), "b": ...}, ...}: ‖update‖ / ‖gradient‖ at steps 1 … T
    record_steps: np.ndarray  # 0, record_every, …, steps
    verdicts: np.ndarray  # per learning rate: verdicts.LEARNED, CHANCE or DIVERGED

    @property
    def best(self) -> int:
        """Index of the learning rate with the lowest final training loss among those that learned."""
        return verdicts.best(self.metrics["train_loss"][:, -1], self.verdicts)

    @property
    def learning_rate(self) -> float:
        return float(self.learning_rates[self.best])

    def at_best(self, key):
        """A metric (one of METRICS) or, for ``"rate"``, the per-layer rates, at the best learning rate."""
        return jax.tree.map(lambda x: x[self.best], self.rates if key == "rate" else self.metrics[key])

    def final(self, key) -> float:
        """A metric's last record (the final params) at the best learning rate: the table's number."""
        return float(self.metrics[key][self.best, -1])


def _evaluate(params, x, y, n_train: int) -> dict:
    """METRICS on the training rows ``[:n_train]`` and the test rows ``[n_train:]`` of (x, y).

    One forward pass over both sets rather than one per set: half the evaluation
    code for XLA to compile, in a program whose compilation is most of ``--quick``.
    """
    log_probs = jax.nn.log_softmax(digits.logits(params, x))
    losses = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
    correct = jnp.argmax(log_probs, axis=1) == y
    train, test = slice(None, n_train), slice(n_train, None)
    values = (losses[train].mean(), correct[train].mean(), losses[test].mean(), correct[test].mean())
    return dict(zip(METRICS, values))


def _program(tx, steps: int, record_every: int):
    """The pure function that trains every (optimizer, learning rate) pair: compiled once.

    ``tx`` is ``adaptx.monitor(descent.one_of(optimizers))``: the runs are a single
    ``jax.vmap`` over (optimizer index, learning rate) pairs, so the MLP's forward
    and backward pass, the metrics and the monitor are in the program once.
    """

    def metrics(params, data):
        (x_train, _), (x, y) = data  # (x, y): the training rows, then the test rows
        return _evaluate(params, x, y, x_train.shape[0])

    def one(params, data, schedule, index, learning_rate):
        def step(carry, t):
            params, state = carry
            grads = jax.grad(digits.cross_entropy)(params, digits.minibatch((data[0], schedule), t))
            updates, state = tx.update(grads, state, params)
            return (adaptx.apply_updates(params, updates), state), adaptx.monitor_stats(state)["norm_ratio"]

        def block(carry, first):
            carry, rates = jax.lax.scan(step, carry, first + jnp.arange(record_every))
            return carry, (rates, metrics(carry[0], data))

        state = descent.choose(tx.init(params), index, learning_rate=learning_rate)
        firsts = record_every * jnp.arange(steps // record_every)
        _, (rates, records) = jax.lax.scan(block, (params, state), firsts)
        return jax.tree.map(lambda r: r.reshape(steps), rates), records  # (blocks, record_every) -> steps

    def program(params, data, schedule, indices, learning_rates):
        start = metrics(params, data)  # step 0, the same for every run
        runs = jax.vmap(one, in_axes=(None, None, None, 0, 0))(params, data, schedule, indices, learning_rates)
        return start, runs

    return program


def run_all(data: digits.Split, steps: int, record_every: int, learning_rates=LEARNING_RATES,
            optimizers=OPTIMIZERS) -> list:
    """Train every optimizer at every one of ``learning_rates``; a :class:`Run` per optimizer."""
    grid = np.asarray(learning_rates)
    tx = adaptx.monitor(descent.one_of(make(learning_rate=1e-3) for make in optimizers.values()), per_coordinate=False)
    schedule = digits.batch_schedule(len(data.y_train), steps, BATCH_SIZE)
    # Run r trains optimizer r // len(grid) at learning rate grid[r % len(grid)].
    indices = np.repeat(np.arange(len(optimizers), dtype=np.int32), len(grid))
    # Joined on the host: an eager jnp.concatenate would compile a program of its own.
    both = tuple(jnp.asarray(np.concatenate([np.asarray(a), np.asarray(b)]))
                 for a, b in ((data.x_train, data.x_test), (data.y_train, data.y_test)))
    args = (digits.init_mlp(), ((data.x_train, data.y_train), both), schedule,
            jnp.asarray(indices), jnp.asarray(np.tile(grid.astype(np.float32), len(optimizers))))
    program = _program(tx, steps, record_every)
    start, (rates, records) = jax.device_get(descent.compiled(program, *args, options=COMPILE_OPTIONS))
    record_steps = np.arange(0, steps + 1, record_every)
    runs = []
    for i, name in enumerate(optimizers):
        mine = slice(i * len(grid), (i + 1) * len(grid))
        metrics = {  # step 0 (shared), then each record
            key: np.concatenate([np.full((len(grid), 1), start[key]), records[key][mine]], axis=1)
            for key in METRICS
        }
        verdict = verdicts.classify(metrics["train_loss"], metrics["test_acc"][:, -1])
        runs.append(Run(name, grid, metrics, jax.tree.map(lambda r: r[mine], rates), record_steps, verdict))
    return runs


WORK = 4  # training (one program), three figures


def train(quick: bool = False) -> tuple:
    """Load the digits and train every optimizer: ``(data, runs)``, what :func:`section` reports."""
    data = digits.load()
    return data, run_all(data, *STEPS[quick], QUICK_LEARNING_RATES if quick else LEARNING_RATES, optimizers(quick))


def start(quick: bool, executor) -> "concurrent.futures.Future":
    """Submit :func:`train` to ``executor``, for :func:`section`'s ``prepared``.

    Most of it is XLA compiling and running, which releases the GIL, so on a
    second core it overlaps the sections before this one (the demo's runner
    starts it first); the rest is importing scikit-learn and tracing.
    """
    return executor.submit(train, quick)


def section(out_dir: pathlib.Path, progress, quick: bool = False, prepared=None) -> str:
    """Train (or wait for ``prepared``, a future of :func:`train`), plot into ``out_dir``, return the markdown."""
    from adaptx_demo import digits_plots as plots

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps, _ = STEPS[quick]
    grid = QUICK_LEARNING_RATES if quick else LEARNING_RATES
    label = f"digits: load data, compile and train {len(optimizers(quick))} optimizers × {len(grid)} η × {steps} steps"
    with progress.phase(label + (" (started in the background)" if prepared is not None else "")):
        data, runs = prepared.result() if prepared is not None else train(quick)
    for path, plot in zip(FILES, (plots.curves, plots.effective_rates, plots.sweep_heatmap)):
        with progress.phase(f"digits: plot {path}"):
            plot(runs, grid, out_dir / path)
    return _markdown(runs, data, steps)


def _ranges(mask: np.ndarray, learning_rates: np.ndarray) -> str:
    """The learning rates where ``mask`` holds, as runs of neighbours on the grid: "1e-4–4.6e-4, 2.2–10"."""
    parts, index = [], np.flatnonzero(mask)
    for run in np.split(index, np.flatnonzero(np.diff(index) > 1) + 1) if len(index) else []:
        low, high = learning_rates[run[0]], learning_rates[run[-1]]
        parts.append(f"{low:.2g}" if run[0] == run[-1] else f"{low:.2g}–{high:.2g}")
    return ", ".join(parts) or "none"


def _markdown(runs: list, data: digits.Split, steps: int) -> str:
    grid = runs[0].learning_rates
    rows, marks = [], []
    for run in runs:
        rate = run.at_best("rate")["layer1"]["w"] / run.learning_rate
        rows.append([
            run.name, f"{run.learning_rate:.2g}", f"{run.final('train_loss'):.3g}", f"{run.final('train_acc'):.1%}",
            f"{run.final('test_acc'):.1%}", f"{rate[0]:.3g} → {rate[-1]:.3g}",
        ])
        marks.append([run.name, *(_ranges(run.verdicts == v, run.learning_rates) for v in (verdicts.CHANCE, verdicts.DIVERGED))])
    return "\n\n".join([
        "## Real data: handwritten digits",
        f"A 64-64-10 tanh MLP on scikit-learn's 8×8 digits ({len(data.y_train)} training,"
        f" {len(data.y_test)} test images), {steps} steps of minibatches of {BATCH_SIZE}."
        f" Each optimizer's {len(grid)} learning rates ({grid[0]:g} to {grid[-1]:.2g}) ran in one compiled program with every other optimizer's (`jax.vmap` over"
        " (optimizer, learning rate) pairs, the learning rate set by `adaptx.set_hyperparams`), `adaptx.monitor` recording each layer's effective learning rate"
        " ‖update‖ / ‖gradient‖ at every step. The table and curves show each optimizer at its best"
        " learning rate: the lowest final train loss among the runs that learned (neither diverged nor"
        " at chance level). Train loss and train accuracy are on the full training set, test accuracy on"
        f" the test set, all at step {steps}: the last points of the curves below. The last column is"
        f" the first layer's ‖update‖ / ‖gradient‖ divided by η at steps 1 and {steps}.",
        markdown.table(
            ["optimizer", "best η", "train loss", "train accuracy", "test accuracy", "layer-1 rate / η, step 1 → T"],
            rows,
        ),
        markdown.image(FILES[0], "train and test loss and accuracy"),
        "Per-layer effective learning rate relative to its value at step 1: constant for SGD,"
        " shrinking for Adagrad (its accumulator of squared gradients only grows), growing with momentum as"
        " the velocity builds up, adapting without vanishing for RMSProp and Adam.",
        markdown.image(FILES[1], "effective learning rates relative to step 1"),
        "Learning rates that did not learn, marked in the heatmap below ("
        + verdicts.DEFINITION + "):",
        markdown.table(["optimizer", "η at chance level", "η diverged"], marks),
        markdown.image(FILES[2], "learning-rate sweep"),
    ])
