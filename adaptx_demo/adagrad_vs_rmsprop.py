"""Seed 000: Adagrad's learning rate shrinks for good, RMSProp's recovers.

Both minimise f(x) = x²/2 from x₀ = 5 with η = 1 for 50 steps, ε = 1e-8 and
RMSProp's ρ = 0.9, as in the seed's NumPy code, run in float64 as NumPy does.
Adagrad divides by √(Σ g²), which only grows; RMSProp divides by a moving
average of g² that forgets, so as the gradient shrinks its step per unit of
gradient grows again.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import descent, markdown

TITLE = "Adagrad vs RMSProp on x²/2 (seed 000)"
WORK = 2  # both runs (one program), the figure
STEPS, START, LEARNING_RATE, EPS = 50, 5.0, 1.0, 1e-8
OPTIMIZERS = {
    "Adagrad": lambda: adaptx.adagrad(LEARNING_RATE, eps=EPS),
    "RMSProp (ρ = 0.9)": lambda: adaptx.rmsprop(LEARNING_RATE, decay=0.9, eps=EPS),
}


def _loss(x):
    return 0.5 * x**2


def runs() -> dict:
    """Per optimizer: x₀ … x₅₀ and the effective learning rate of steps 1 … 50."""
    with jax.enable_x64(True):
        txs = {name: make() for name, make in OPTIMIZERS.items()}
        each = descent.run_each(txs, _loss, jnp.asarray(START, jnp.float64), STEPS)
        return {
            name: (np.asarray(run.params), np.asarray(descent.effective_learning_rate(run)))
            for name, run in each.items()
        }


def section(out_dir: Path, progress, quick: bool = False) -> str:
    with progress.phase("Adagrad vs RMSProp on x²/2: compile and run both (float64)"):
        results = runs()
    figure_path = out_dir / "adagrad_vs_rmsprop.png"
    with progress.phase(f"Adagrad vs RMSProp: plot {figure_path.name}"):
        _plot(results, figure_path)
    rows = [
        [name, f"{path[-1]:.4g}", f"{rate[0]:.4g}", f"{rate[9]:.4g}", f"{rate[-1]:.4g}"]
        for name, (path, rate) in results.items()
    ]
    return "\n\n".join([
        f"## {TITLE}",
        f"f(x) = x²/2 from x₀ = {START}, η = {LEARNING_RATE}, ε = {EPS:g}, {STEPS} steps, float64 "
        "(the seed's NumPy code). The effective learning rate is |Δxₜ| / |gₜ|, the step taken per "
        "unit of gradient: Adagrad's is η/√(Σg²), which can only shrink; RMSProp's is η/√(EMA of g²), "
        "which grows again as the gradients get small: RMSProp reaches the minimum within a few "
        "steps and then rattles around it with steps of order η, while Adagrad's ever smaller "
        "steps approach it more slowly.",
        markdown.image(figure_path, "Adagrad vs RMSProp trajectories and effective learning rates"),
        markdown.table(["optimizer", f"x after {STEPS} steps", "eff. lr, step 1", "step 10", f"step {STEPS}"], rows),
    ])


def _plot(results, path: Path) -> None:
    from adaptx_demo._extras import new_figure, save_figure  # matplotlib: imported when first needed

    figure = new_figure(figsize=(11, 4.2))
    trajectory, rates = figure.subplots(1, 2)
    for (name, (params, rate)), colour in zip(results.items(), ("tab:blue", "tab:orange")):
        trajectory.plot(params, marker=".", color=colour, label=name)
        rates.plot(np.arange(1, len(rate) + 1), rate, marker=".", color=colour, label=name)
    trajectory.axhline(0.0, color="grey", lw=0.8, ls="--", label="minimum")
    trajectory.set(xlabel="step", ylabel="x", title="Parameter value")
    rates.set(xlabel="step", ylabel="|Δx| / |g|", yscale="log", title="Effective learning rate")
    for axes in (trajectory, rates):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"Adagrad vs RMSProp on f(x) = x²/2, x₀ = {START:g}, η = {LEARNING_RATE:g}")
    save_figure(figure, path)
