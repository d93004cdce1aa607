"""Clear errors for bad hyperparameters and mismatched pytrees."""
import math
from typing import Any, Optional

import jax
import numpy as np

# Allowed range of each hyperparameter, by adaptx's names: (low, high, low_closed, high_closed).
# Presets that take other libraries' names (adaptx.compat) map them onto these.
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


# Hyperparameter name -> its entry in RANGES, for set_hyperparams. Presets that take other
# libraries' names (adaptx.compat.torch, adaptx.compat.keras) add theirs here.
RANGE_OF = {name: name for name in RANGES}


def describe_range(range_name: str) -> str:
    low, high, low_closed, high_closed = RANGES[range_name]
    return f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"


def concrete(value: Any) -> Optional[np.ndarray]:
    """``value`` as a NumPy array, or None when it is traced (never rejected) or a schedule."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_scalar(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` (concrete or traced) is a real scalar.

    A hyperparameter of shape (3,) would broadcast per coordinate, or fail
    deep inside a block; to give each member of a sweep its own value, use
    ``jax.vmap`` (inside it each member's value is a scalar).
    """
    shape = np.shape(value)
    if shape != ():
        raise ValueError(
            f"{name} must be a scalar, got an array of shape {shape}; to run several values"
            f" at once, vmap over states with adaptx.set_hyperparams (see adaptx.sweep)"
        )
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    elif not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
              or dtype == jax.numpy.bfloat16):
        raise TypeError(f"{name} must be a real number, got {name}={value!r} of dtype {np.dtype(dtype).name}")


def check_range(name: str, value: Any, range_name: Optional[str] = None) -> None:
    """Raise ValueError if a concrete ``value`` is not a scalar in ``RANGES[range_name or name]``.

    Traced values are checked for shape only: their values are unknown until run.
    """
    if isinstance(value, tuple) and hasattr(value, "complement"):  # a numerics.Rate
        value = value.value
    if callable(value):
        return
    check_scalar(name, value)
    array = concrete(value)
    if array is None:
        return
    number = float(array)
    range_name = RANGE_OF.get(range_name or name, range_name or name)
    low, high, low_closed, high_closed = RANGES[range_name]
    above = number >= low if low_closed else number > low
    below = number <= high if high_closed else number < high
    if not (above and below):
        raise ValueError(f"{name} must lie in {describe_range(range_name)}, got {value!r}")
    if high == 1.0 and not high_closed and number > 0.5 and np.float32(number) == 1.0:
        raise ValueError(
            f"{name}={value!r} rounds to 1.0 in float32, where the decay would never move;"
            f" use at most {float(np.nextafter(np.float32(1), np.float32(0))):.9g}"
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
