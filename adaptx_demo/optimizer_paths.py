"""Every optimizer on an ill-conditioned quadratic and on Rosenbrock's valley.

Each optimizer gets its own learning rate per problem: the one, from a
log-spaced grid, whose loss over the last tenth of the run is lowest at its
worst (converged and staying there, not a lucky last step). Both problems
and the whole grid run as one compiled ``jax.vmap`` per optimizer, the grid
through ``adaptx.set_hyperparams``. Other hyperparameters keep adaptx's defaults.
"""
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import descent, markdown
from adaptx_demo.problems import PROBLEMS

TITLE = "Every optimizer on an ill-conditioned quadratic and on Rosenbrock"
OPTIMIZERS = {
    "sgd": lambda lr: adaptx.sgd(lr),
    "sgd+momentum": lambda lr: adaptx.sgd(lr, momentum=0.9),
    "adagrad": adaptx.adagrad,
    "rmsprop": adaptx.rmsprop,
    "adam": adaptx.adam,
    "adamw": adaptx.adamw,
    "adadelta": adaptx.adadelta,
    "adamax": adaptx.adamax,
    "nadam": adaptx.nadam,
}

# The adaptive family (issue 13), in the full run; --quick keeps the seeds' optimizers above to
# stay CI-sized (each optimizer adds to the one program's compile time). rprop is left out: its
# learning rate is the initial step Δ₀, read at init, so the grid (set_hyperparams) cannot sweep it.
FAMILY = {
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
    "prodigy": adaptx.prodigy,  # η multiplies the estimated step d
}


def optimizers(quick: bool) -> dict:
    """The optimizers a run shows: the seeds' with ``quick``, every one otherwise."""
    return OPTIMIZERS if quick else {**OPTIMIZERS, **FAMILY}
LEARNING_RATES = 10.0 ** np.arange(-4.0, 0.25, 0.25)  # 1e-4 … 1, four per decade
WORK = 1 + len(PROBLEMS) + 1  # the sweeps (one program), a path figure per problem, the losses


class Best(NamedTuple):
    learning_rate: float
    path: np.ndarray  # (steps + 1, 2)
    losses: np.ndarray  # (steps + 1,)
    diverged: int  # how many of the grid's learning rates diverged (see diverged())


def sweeps(optimizers: dict) -> dict:
    """``{name: (paths, losses)}``, NumPy arrays of shape (problem, learning rate, step[, 2]).

    Every optimizer, problem and learning rate runs in one compiled program,
    all problems for the longest one's steps: a ``jax.vmap`` over problems and
    over (optimizer, learning rate) pairs, the optimizer picked by
    :func:`descent.one_of`. A program per optimizer would pay XLA's
    per-program cost each time, and compiling is most of this section's time.
    """
    tx = descent.one_of(make(float(LEARNING_RATES[0])) for make in optimizers.values())
    losses = [problem.loss for problem in PROBLEMS]
    steps = max(problem.steps for problem in PROBLEMS)

    def one(problem, start, index, learning_rate):
        def loss(params):
            return jax.lax.switch(problem, losses, params)

        state = descent.choose(tx.init(start), index, learning_rate=learning_rate)
        run = descent.descend(tx, loss, start, steps, state)
        return run.params, run.losses  # not the gradients and updates: nothing reads them

    every_run = jax.vmap(jax.vmap(one, in_axes=(None, None, 0, 0)), in_axes=(0, 0, None, None))
    count = len(LEARNING_RATES)
    # Run r is optimizer r // count at LEARNING_RATES[r % count].
    indices = jnp.asarray(np.repeat(np.arange(len(optimizers), dtype=np.int32), count))
    rates = jnp.asarray(np.tile(LEARNING_RATES.astype(np.float32), len(optimizers)))
    starts = jnp.asarray([problem.start for problem in PROBLEMS])
    paths, values = jax.device_get(descent.compiled(every_run, jnp.arange(len(PROBLEMS)), starts, indices, rates))
    return {name: (paths[:, i * count:(i + 1) * count], values[:, i * count:(i + 1) * count])
            for i, name in enumerate(optimizers)}


def diverged(losses: np.ndarray) -> np.ndarray:
    """Per run (the last axis is steps): a loss went non-finite, or ended above where it started."""
    with np.errstate(invalid="ignore"):
        return ~np.all(np.isfinite(losses), axis=-1) | ~(losses[..., -1] <= losses[..., 0])


def pick(paths: np.ndarray, losses: np.ndarray) -> Best:
    """The run whose worst loss over its last tenth is lowest; a diverged run never wins."""
    tail = losses[:, -max(1, losses.shape[1] // 10):]
    score = np.where(diverged(losses), np.inf, np.nan_to_num(tail.max(axis=1), nan=np.inf))
    best = int(np.argmin(score))
    return Best(float(LEARNING_RATES[best]), paths[best], losses[best], int(diverged(losses).sum()))


def start(quick: bool, executor):
    """Submit :func:`sweeps` to ``executor``, for :func:`section`'s ``prepared``: it is mostly XLA
    compiling, which releases the GIL and so overlaps the sections before this one."""
    return executor.submit(sweeps, optimizers(quick))


def section(out_dir: Path, progress, quick: bool = False, prepared=None) -> str:
    shown = optimizers(quick)
    label = f"paths: compile and run {len(shown)} optimizers × {len(LEARNING_RATES)} η × {len(PROBLEMS)} problems"
    with progress.phase(label + (" (started in the background)" if prepared is not None else "")):
        runs = prepared.result() if prepared is not None else sweeps(shown)
    from adaptx_demo.path_plots import plot_losses, plot_paths  # matplotlib: imported when first needed

    results = {}
    for name, (paths, losses) in runs.items():
        for i, problem in enumerate(PROBLEMS):
            steps = problem.steps + 1
            results[problem.name, name] = pick(paths[i, :, :steps], np.asarray(losses[i, :, :steps], np.float64))
    for problem in PROBLEMS:
        figure = out_dir / f"paths_{problem.name}.png"
        with progress.phase(f"paths: plot {figure.name}"):
            plot_paths(problem, {n: results[problem.name, n] for n in shown}, figure)
    with progress.phase("paths: plot losses.png"):
        plot_losses(PROBLEMS, shown, results, out_dir / "losses.png")
    return _markdown(results, shown, out_dir)


def _markdown(results, shown, out_dir: Path) -> str:
    def cells(problem, name):
        best = results[problem.name, name]
        edge = " (largest tried)" if best.learning_rate == LEARNING_RATES[-1] else ""
        return [f"{best.learning_rate:.3g}{edge}", f"{best.losses[-1]:.3g}", f"{best.diverged}"]

    headers = ["optimizer"]
    for problem in PROBLEMS:
        headers += [f"{problem.title}: η", f"final loss ({problem.steps} steps)", "η diverged"]
    rows = [[name, *(c for p in PROBLEMS for c in cells(p, name))] for name in shown]
    problems = "\n".join(
        f"- {p.title}: {p.formula}, from {p.start} to the minimum at {p.minimum}, {p.steps} steps."
        for p in PROBLEMS
    )
    return "\n\n".join([
        f"## {TITLE}",
        problems,
        "The quadratic is axis-aligned, so a per-coordinate scaling can undo its conditioning; "
        "Rosenbrock's curved valley is where it cannot.",
        f"Learning rates: for each optimizer and problem, the best of {len(LEARNING_RATES)} values "
        f"from {LEARNING_RATES[0]:g} to {LEARNING_RATES[-1]:g} (four per decade): the one whose worst "
        "loss over the last tenth of the run is lowest. The grid stops at 1 because larger steps "
        "throw these paths far off the plots before they settle; \"largest tried\" marks an "
        "optimizer that might do better with more; \"η diverged\" counts the grid's values whose loss "
        "went non-finite or ended above its starting value (they are never picked). The whole grid, of "
        "every optimizer, runs as one compiled program, with `jax.vmap` over "
        "`adaptx.set_hyperparams`. Everything else is adaptx's default: sgd+momentum uses momentum "
        "0.9, adamw decays weights by 1e-2 (so its minimum is not exactly the problem's), and "
        "adadelta's first steps are of order √ε = 1e-3 and grow only with its own history of "
        "steps, which is why it lags here.",
        markdown.table(headers, rows),
        *(markdown.image(out_dir / f"paths_{p.name}.png", f"optimizer paths on {p.title}") for p in PROBLEMS),
        markdown.image(out_dir / "losses.png", "loss per step for every optimizer"),
    ])
