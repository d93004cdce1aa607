"""What a sweep returns: per-setting arrays and a tidy table of them."""
import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The outcome of :func:`adaptx.sweep`, one entry per setting in the order given.

    ``losses[i, t]`` is setting i's training loss at step t, before its update;
    ``final_loss[i]`` the loss of ``params`` (whose leaves have a leading
    settings axis) on the batch a next step would see. ``hyperparams[i]``
    holds every swept name's value for setting i, including names a setting
    left at the optimizer's own value. ``records`` (None without a
    ``record`` function) has leaves of shape (settings, records, ...), taken
    after the steps in ``record_steps``.
    """

    settings: list
    hyperparams: list
    losses: np.ndarray
    final_loss: np.ndarray
    params: Any
    records: Any = None
    record_steps: np.ndarray = None

    def __len__(self) -> int:
        return len(self.settings)

    def rows(self) -> list:
        """One dict per setting: its hyperparameters, final and lowest loss, and whether it diverged."""
        return [
            {
                **values,
                "final_loss": float(final),
                "min_loss": float(np.nanmin(curve)) if np.isfinite(curve).any() else math.nan,
                "diverged": not bool(np.isfinite(final)),
            }
            for values, final, curve in zip(self.hyperparams, self.final_loss, self.losses)
        ]

    def best(self) -> dict:
        """The row with the lowest finite final loss."""
        finite = [row for row in self.rows() if not row["diverged"]]
        if not finite:
            raise ValueError("every setting diverged (non-finite final loss): try smaller learning rates")
        return min(finite, key=lambda row: row["final_loss"])

    def to_markdown(self, sort: bool = False) -> str:
        """A GitHub-flavoured markdown table of :meth:`rows`, lowest final loss first if ``sort``."""
        rows = self.rows()
        if sort:
            rows.sort(key=lambda row: (row["diverged"], row["final_loss"]))
        columns = list(rows[0]) if rows else []
        lines = [
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
        return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
