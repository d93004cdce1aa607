"""Clear errors for bad hyperparameters and mismatched pytrees."""
import math
from typing import Any, Optional

import jax
import numpy as np

from adaptx._src.numerics import rate_value

# Allowed range of each hyperparameter name: (low, high, low_closed, high_closed).
RANGES = {
    "learning_rate": (0.0, math.inf, True, False),
    "b1": (0.0, 1.0, True, False),
    "b2": (0.0, 1.0, True, False),
    "decay": (0.0, 1.0, True, False),
    "rho": (0.0, 1.0, True, False),
    "momentum": (0.0, 1.0, True, False),
    "eps": (0.0, math.inf, True, False),
    "eps_root": (0.0, math.inf, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "initial_accumulator": (0.0, math.inf, True, False),
    "max_norm": (0.0, math.inf, False, False),
    "momentum_decay": (0.0, math.inf, True, False),
    "max_value": (0.0, math.inf, False, False),
    "loss_scale": (0.0, math.inf, False, False),
    "decay_rate": (0.0, math.inf, True, False),
    "dampening": (0.0, 1.0, True, True),
}
# torch.optim's and keras' names for the same quantities (adaptx.compat.torch, adaptx.compat.keras).
RANGES.update(
    lr=RANGES["learning_rate"], lr_decay=RANGES["decay_rate"], alpha=RANGES["decay"],
    beta1=RANGES["b1"], beta2=RANGES["b2"], beta_1=RANGES["b1"], beta_2=RANGES["b2"],
    epsilon=RANGES["eps"], initial_accumulator_value=RANGES["initial_accumulator"],
    clipnorm=RANGES["max_norm"], global_clipnorm=RANGES["max_norm"], clipvalue=RANGES["max_value"],
    loss_scale_factor=RANGES["loss_scale"],
)


def describe_range(name: str) -> str:
    low, high, low_closed, high_closed = RANGES[name]
    return f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"


def concrete(value: Any) -> Optional[np.ndarray]:
    """``value`` as a NumPy array, or None when it is traced (never rejected)."""
    if callable(value):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_range(name: str, value: Any, range_name: Optional[str] = None) -> None:
    """Raise ValueError if a concrete ``value`` lies outside ``RANGES[range_name or name]``."""
    low, high, low_closed, high_closed = RANGES[range_name or name]
    array = concrete(rate_value(value))
    if array is None:
        return
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    above = array >= low if low_closed else array > low
    below = array <= high if high_closed else array < high
    if not np.all(above & below):
        raise ValueError(
            f"{name} must lie in {describe_range(range_name or name)}, got {value!r}"
        )


def check_tree_match(
    updates: Any,
    reference: Any,
    what: str = "optimizer state",
    *,
    subject: str = "updates",
    advice: str = "pass gradients with the same tree as the params the optimizer was initialised with",
) -> None:
    """Raise ValueError naming the first path where ``updates`` and ``reference`` differ.

    Structure and every leaf's shape must agree: a wrong-shaped gradient is an
    error, never silently broadcast against the state. ``subject`` names the
    checked tree and ``advice`` tells the user how to fix a mismatch.
    """
    got, got_def = jax.tree_util.tree_flatten_with_path(updates)
    want, want_def = jax.tree_util.tree_flatten_with_path(reference)
    for (got_path, got_leaf), (want_path, want_leaf) in zip(got, want):
        if got_path != want_path:
            raise ValueError(
                f"{subject} have a leaf at {path_name(got_path)} where the {what} has one at"
                f" {path_name(want_path)}: {advice}"
            )
        if np.shape(got_leaf) != np.shape(want_leaf):
            raise ValueError(
                f"{subject} at {path_name(got_path)} have shape {np.shape(got_leaf)} but the"
                f" {what} there has shape {np.shape(want_leaf)}: {advice}"
            )
    if len(got) != len(want):
        longer, path = (subject, got[len(want)][0]) if len(got) > len(want) else (
            what, want[len(got)][0])
        raise ValueError(f"there is an extra leaf in the {longer} at {path_name(path)}: {advice}")
    if got_def != want_def:
        raise ValueError(
            f"{subject} and the {what} have the same leaves but different containers:"
            f" {got_def} vs {want_def}"
        )


def path_name(path) -> str:
    """A key path as users write it (``['layer'][0]``), or "the root" for the empty path."""
    return jax.tree_util.keystr(path) or "the root"
