"""Effective-learning-rate diagnostics recorded inside jit: what an adaptive method does to each rate."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptx import _numerics as nx
from adaptx._validate import check_range
from adaptx.base import GradientTransformation
from adaptx.hyperparams import _find


class LeafDiagnostics(NamedTuple):
    """Statistics of one parameter leaf at the last update (float32 scalars)."""

    rate_mean: jax.Array  # mean of |u| / |g| over the coordinates with g ≠ 0
    rate_min: jax.Array
    rate_max: jax.Array
    frac_below: jax.Array  # fraction of those coordinates whose rate < threshold
    update_norm: jax.Array  # ‖u‖₂ over the whole leaf
    grad_norm: jax.Array  # ‖g‖₂ over the whole leaf


class MonitorState(NamedTuple):
    inner_state: Any
    diagnostics: Any  # the params' tree with a LeafDiagnostics per leaf


def _leaf_diagnostics(grad, update, threshold) -> LeafDiagnostics:
    """|u| / |g| statistics over the coordinates where g ≠ 0, and both norms.

    A coordinate with g = 0 has no rate to speak of (0/0 for Adagrad, u/0 with
    momentum), so it is left out; a leaf whose gradient is 0 everywhere
    reports NaN rates and a NaN fraction, and its norms as usual.
    """
    dtype = nx.accumulator_dtype(grad)
    g = jnp.abs(jnp.asarray(grad).astype(dtype))
    u = jnp.abs(jnp.asarray(update).astype(dtype))
    seen = g > 0
    rate = u / jnp.where(seen, g, 1)
    count = jnp.sum(seen)
    # count = 0 makes mean and fraction 0/0 = NaN, and min/max would be ±inf: NaN too.
    none = jnp.where(count > 0, 0, jnp.nan).astype(dtype)
    below = jnp.sum(seen & (rate < jnp.asarray(threshold, dtype)))
    return LeafDiagnostics(
        rate_mean=jnp.sum(jnp.where(seen, rate, 0)) / count,
        rate_min=jnp.min(jnp.where(seen, rate, jnp.inf), initial=jnp.inf) + none,
        rate_max=jnp.max(jnp.where(seen, rate, -jnp.inf), initial=-jnp.inf) + none,
        frac_below=(below / count).astype(dtype),
        update_norm=jnp.sqrt(jnp.sum(u * u)),
        grad_norm=jnp.sqrt(jnp.sum(g * g)),
    )


def monitor(tx: GradientTransformation, threshold: float = 1e-4) -> GradientTransformation:
    """Wrap ``tx`` to record, at every update, each leaf's effective learning rate.

        rᵢ = |uᵢ| / |gᵢ|     for every coordinate i with gᵢ ≠ 0,

    where g is the gradient given to ``update`` and u the update ``tx``
    returns (so r includes the learning rate, momentum, weight decay: all of
    ``tx``). Plain SGD has r = η everywhere; Adagrad r = η / (√G + ε), which
    shrinks as G grows; RMSProp's r follows the recent gradient scale and does
    not vanish. Per leaf the state keeps the mean, min and max of r, the
    fraction of coordinates with r < ``threshold`` (stalled coordinates), and
    ‖u‖₂ and ‖g‖₂; read them with :func:`monitor_stats`. Updates pass through
    unchanged, and :func:`adaptx.set_hyperparams` still reaches ``tx``'s
    hyperparameters through the wrapper. Coordinates with g = 0 are left out
    of the rate statistics (a leaf with no such coordinate reports NaN rates).

    Example::

        tx = adaptx.monitor(adaptx.adagrad(0.1), threshold=1e-3)
        updates, state = tx.update(grads, state)
        adaptx.monitor_stats(state)["rate_mean"]   # the params' tree of scalars
    """
    check_range("threshold", threshold, "eps")

    def diagnose(grads, updates):
        return jax.tree.map(lambda g, u: _leaf_diagnostics(g, u, threshold), grads, updates)

    def init(params):
        blank = jax.eval_shape(diagnose, params, params)
        return MonitorState(tx.init(params), jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), blank))

    def update(grads, state, params=None):
        updates, inner = tx.update(grads, state.inner_state, params)
        return updates, MonitorState(inner, diagnose(grads, updates))

    return GradientTransformation(init, update)


def monitor_stats(state) -> dict:
    """The last update's diagnostics from a state holding one :func:`monitor`.

    Returns ``{"rate_mean", "rate_min", "rate_max", "frac_below",
    "update_norm", "grad_norm"}``, each the params' tree of scalars (NaN before
    the first update), plus ``"global_update_norm"`` and ``"global_grad_norm"``
    over all leaves. Works on a chain's state and under ``jax.vmap`` (every
    value then gains the leading axis).
    """
    found = _find(state, MonitorState)
    if len(found) != 1:
        raise ValueError(
            f"found {len(found)} monitors in this state; pass the state of one"
            if found else
            "this state holds no diagnostics: wrap the optimizer in adaptx.monitor(tx)"
        )
    diagnostics = found[0].diagnostics
    is_stats = lambda node: isinstance(node, LeafDiagnostics)
    stats = {
        name: jax.tree.map(lambda d: getattr(d, name), diagnostics, is_leaf=is_stats)
        for name in LeafDiagnostics._fields
    }
    for name in ("update_norm", "grad_norm"):
        squares = [jnp.square(n) for n in jax.tree.leaves(stats[name])]
        stats["global_" + name] = jnp.sqrt(sum(squares)) if squares else jnp.zeros([])
    return stats
