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
from adaptx.demo import descent, markdown
from adaptx.demo.path_plots import plot_losses, plot_paths
from adaptx.demo.problems import PROBLEMS

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
    # the adaptive family (issue 13); rprop is left out: its learning rate is the initial step
    # Δ₀, read at init, so the learning-rate grid (set_hyperparams) cannot sweep it
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
    "prodigy": lambda lr: adaptx.prodigy(lr),  # lr multiplies the estimated step d
}
LEARNING_RATES = 10.0 ** np.arange(-4.0, 0.25, 0.25)  # 1e-4 … 1, four per decade
WORK = len(OPTIMIZERS) + len(PROBLEMS) + 1  # a sweep per optimizer, a path figure per problem, the losses


class Best(NamedTuple):
    learning_rate: float
    path: np.ndarray  # (steps + 1, 2)
    losses: np.ndarray  # (steps + 1,)


def sweep(make) -> descent.Descent:
    """Runs of shape (problem, learning rate, step), all problems for the longest one's steps."""
    tx = make(float(LEARNING_RATES[0]))
    losses = [problem.loss for problem in PROBLEMS]
    steps = max(problem.steps for problem in PROBLEMS)

    def problem_sweep(index, start):
        def loss(params):
            return jax.lax.switch(index, losses, params)

        return descent.sweep_learning_rates(tx, loss, start, steps, LEARNING_RATES)

    starts = jnp.asarray([problem.start for problem in PROBLEMS])
    return descent.compiled(jax.vmap(problem_sweep), jnp.arange(len(PROBLEMS)), starts)


def pick(paths: np.ndarray, losses: np.ndarray) -> Best:
    """The run whose worst loss over its last tenth is lowest; a diverged run never wins."""
    tail = losses[:, -max(1, losses.shape[1] // 10):]
    score = np.nan_to_num(tail.max(axis=1), nan=np.inf)
    best = int(np.argmin(score))
    return Best(float(LEARNING_RATES[best]), paths[best], losses[best])


def section(out_dir: Path, progress, quick: bool = False) -> str:
    results = {}
    for name, make in OPTIMIZERS.items():
        progress.set_postfix_str(name)
        runs = sweep(make)
        for i, problem in enumerate(PROBLEMS):
            steps = problem.steps + 1
            paths = np.asarray(runs.params[i, :, :steps])
            results[problem.name, name] = pick(paths, np.asarray(runs.losses[i, :, :steps], np.float64))
        progress.update()
    progress.set_postfix_str("plotting")
    for problem in PROBLEMS:
        plot_paths(problem, {n: results[problem.name, n] for n in OPTIMIZERS}, out_dir / f"paths_{problem.name}.png")
        progress.update()
    plot_losses(PROBLEMS, OPTIMIZERS, results, out_dir / "losses.png")
    progress.update()
    progress.set_postfix_str("")
    return _markdown(results, out_dir)


def _markdown(results, out_dir: Path) -> str:
    def cells(problem, name):
        best = results[problem.name, name]
        edge = " (largest tried)" if best.learning_rate == LEARNING_RATES[-1] else ""
        return [f"{best.learning_rate:.3g}{edge}", f"{best.losses[-1]:.3g}"]

    headers = ["optimizer"]
    for problem in PROBLEMS:
        headers += [f"{problem.title}: η", f"final loss ({problem.steps} steps)"]
    rows = [[name, *(c for p in PROBLEMS for c in cells(p, name))] for name in OPTIMIZERS]
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
        "optimizer that might do better with more. The grid runs at once, with `jax.vmap` over "
        "`adaptx.set_hyperparams`. Everything else is adaptx's default: sgd+momentum uses momentum "
        "0.9, adamw decays weights by 1e-2 (so its minimum is not exactly the problem's), and "
        "adadelta's first steps are of order √ε = 1e-3 and grow only with its own history of "
        "steps, which is why it lags here.",
        markdown.table(headers, rows),
        *(markdown.image(out_dir / f"paths_{p.name}.png", f"optimizer paths on {p.title}") for p in PROBLEMS),
        markdown.image(out_dir / "losses.png", "loss per step for every optimizer"),
    ])
