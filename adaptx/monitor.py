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

    rate_mean: jax.Array  # mean of r = |u| / |g| over the coordinates with g ≠ 0
    rate_geomean: jax.Array  # exp(mean(log r)): the typical rate, robust to outliers
    rate_min: jax.Array
    rate_max: jax.Array
    frac_below: jax.Array  # fraction of those coordinates whose rate < threshold
    update_norm: jax.Array  # ‖u‖₂ over the whole leaf
    grad_norm: jax.Array  # ‖g‖₂ over the whole leaf


class MonitorState(NamedTuple):
    inner_state: Any
    diagnostics: Any  # the params' tree with a LeafDiagnostics per leaf


# How the partial results of each reduced term merge, and the merge's identity.
_SUM, _MIN, _MAX = (jnp.add, 0.0), (jnp.minimum, jnp.inf), (jnp.maximum, -jnp.inf)


def _leaf_diagnostics(grad, update, threshold) -> LeafDiagnostics:
    """|u| / |g| statistics over the coordinates where g ≠ 0, and both norms.

    A coordinate with g = 0 has no rate to speak of (0/0 for Adagrad, u/0 with
    momentum), so it is left out; a leaf whose gradient is 0 everywhere
    reports NaN rates and a NaN fraction, and its norms as usual. Every sum,
    minimum and maximum comes from one variadic reduction: one pass over the
    leaf, one kernel to compile.
    """
    dtype = nx.accumulator_dtype(grad)
    g = jnp.abs(jnp.asarray(grad).astype(dtype))
    u = jnp.abs(jnp.asarray(update).astype(dtype))
    seen = g > 0
    rate = u / jnp.where(seen, g, 1)
    terms = {
        "rate": (jnp.where(seen, rate, 0), _SUM),
        "log_rate": (jnp.where(seen, jnp.log(rate), 0), _SUM),
        "count": (seen.astype(dtype), _SUM),  # exact to 2²⁴ coordinates
        "below": ((seen & (rate < threshold)).astype(dtype), _SUM),
        "min": (jnp.where(seen, rate, jnp.inf), _MIN),
        "max": (jnp.where(seen, rate, -jnp.inf), _MAX),
        "u2": (u * u, _SUM),
        "g2": (g * g, _SUM),
    }
    merges = [merge for _, (merge, _) in terms.values()]
    reduced = dict(zip(terms, jax.lax.reduce(
        tuple(value for value, _ in terms.values()),
        tuple(jnp.asarray(identity, dtype) for _, (_, identity) in terms.values()),
        lambda a, b: tuple(merge(x, y) for merge, x, y in zip(merges, a, b)),
        tuple(range(g.ndim)),
    )))
    count = reduced["count"]
    # With no coordinate seen, the means are 0/0 = NaN already; min and max would be ±inf.
    none = jnp.where(count > 0, 0, jnp.nan).astype(dtype)
    return LeafDiagnostics(
        rate_mean=reduced["rate"] / count,
        rate_geomean=jnp.exp(reduced["log_rate"] / count),
        rate_min=reduced["min"] + none,
        rate_max=reduced["max"] + none,
        frac_below=reduced["below"] / count,
        update_norm=jnp.sqrt(reduced["u2"]),
        grad_norm=jnp.sqrt(reduced["g2"]),
    )


def monitor(tx: GradientTransformation, threshold: float = 1e-4) -> GradientTransformation:
    """Wrap ``tx`` to record, at every update, each leaf's effective learning rate.

        rᵢ = |uᵢ| / |gᵢ|     for every coordinate i with gᵢ ≠ 0,

    where g is the gradient given to ``update`` and u the update ``tx``
    returns (so r includes the learning rate, momentum, weight decay: all of
    ``tx``). Plain SGD has r = η everywhere; Adagrad r = η / (√G + ε), which
    shrinks as G grows; RMSProp's r follows the recent gradient scale and does
    not vanish. Per leaf the state keeps the mean, geometric mean, min and max
    of r, the fraction of coordinates with r < ``threshold`` (stalled ones),
    and ‖u‖₂ and ‖g‖₂; read them with :func:`monitor_stats`.

    Coordinates with g = 0 are left out of the rate statistics (a leaf with
    none left reports NaN rates). With momentum, a coordinate whose gradient
    is momentarily tiny has a huge r, so the geometric mean summarises a
    typical rate better than the mean. Updates pass through unchanged, and
    :func:`adaptx.set_hyperparams` reaches ``tx``'s hyperparameters through
    the wrapper.

    Example::

        tx = adaptx.monitor(adaptx.adagrad(0.1), threshold=1e-3)
        updates, state = tx.update(grads, state)
        adaptx.monitor_stats(state)["rate_geomean"]   # the params' tree of scalars
    """
    check_range("threshold", threshold, "eps")

    def diagnose(grads, updates):
        return jax.tree.map(lambda g, u: _leaf_diagnostics(g, u, threshold), grads, updates)

    def init(params):
        blank = jax.eval_shape(diagnose, params, params)
        nans = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), blank)
        return MonitorState(tx.init(params), nans)

    def update(grads, state, params=None):
        updates, inner = tx.update(grads, state.inner_state, params)
        return updates, MonitorState(inner, diagnose(grads, updates))

    return GradientTransformation(init, update)


def monitor_stats(state) -> dict:
    """The last update's diagnostics from a state holding one :func:`monitor`.

    Returns ``{"rate_mean", "rate_geomean", "rate_min", "rate_max",
    "frac_below", "update_norm", "grad_norm"}``, each the params' tree of
    scalars (NaN before the first update), plus ``"global_update_norm"`` and
    ``"global_grad_norm"`` over all leaves. Works on a chain's state and under
    ``jax.vmap`` (every value then gains the leading axis).
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
