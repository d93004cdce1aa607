"""Seed 003: RMSprop's first ten steps on x² + 10y², η = 0.1, ρ = 0.99, from (5, 5).

Dividing by the running RMS of each coordinate's gradient makes both
coordinates move by the same amount although y's gradient is 10× x's.
"""
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import descent, markdown

TITLE = "RMSprop on x² + 10y² (seed 003)"
WORK = 1
STEPS = 10

# (x, y, loss) per step as printed by seed 003; its loss is the one before the step.
SEED_003 = np.array([
    (4.0000, 4.0000, 275.0000), (3.3734, 3.3734, 176.0000), (2.9043, 2.9043, 125.1775),
    (2.5283, 2.5283, 92.7866), (2.2157, 2.2157, 70.3128), (1.9503, 1.9503, 54.0031),
    (1.7217, 1.7217, 41.8402), (1.5230, 1.5230, 32.6073), (1.3489, 1.3489, 25.5132),
    (1.1959, 1.1959, 20.0162),
])


def _loss(params):
    return params["x"] ** 2 + 10 * params["y"] ** 2


def rows() -> np.ndarray:
    """(x, y, loss before the step) after each of the ten steps, as the seed prints them."""
    tx = adaptx.rmsprop(0.1, decay=0.99)
    run = descent.run(tx, _loss, {"x": jnp.asarray(5.0), "y": jnp.asarray(5.0)}, STEPS)
    x, y, losses = (np.asarray(a) for a in (run.params["x"], run.params["y"], run.losses))  # slice on the host
    return np.stack([x[1:], y[1:], losses[:-1]], axis=1)


def section(out_dir: Path, progress, quick: bool = False) -> str:
    with progress.phase("RMSprop on x² + 10y²: the seed's ten steps"):
        values = rows()
    printed = [[f"{v:.4f}" for v in row] for row in values]
    table = markdown.table(
        ["step", "x", "y", "loss (before the step)"],
        [[str(step), *row] for step, row in enumerate(printed, start=1)],
    )
    (out_dir / "rmsprop_table.md").write_text(table + "\n")
    progress.write(f"\n{TITLE}\n{table}\n")
    matches = printed == [[f"{v:.4f}" for v in row] for row in SEED_003]
    verdict = (
        "Every entry equals the seed's printout to 4 decimals."
        if matches else
        f"The seed's printout differs by up to {np.max(np.abs(values - SEED_003)):.2g}."
    )
    return "\n\n".join([
        f"## {TITLE}",
        "`adaptx.rmsprop(0.1, decay=0.99)` (torch's ρ; adaptx defaults to the lecture's 0.9) from "
        "x = y = 5. Although y's gradient is ten times x's, both move by the same amount: RMSprop "
        "divides each coordinate by the RMS of its own gradients. " + verdict,
        table,
        "Also saved as [rmsprop_table.md](rmsprop_table.md).",
    ])
