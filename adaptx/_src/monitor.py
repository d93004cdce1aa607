"""Effective-learning-rate diagnostics recorded inside jit: what an adaptive method does to each rate."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.validate import check_range
from adaptx._src.base import GradientTransformation
from adaptx._src.hyperparams import _find


class LeafDiagnostics(NamedTuple):
    """Statistics of one parameter leaf at the last update (float32 scalars).

    The rate fields are None when the monitor keeps norms only.
    """

    update_norm: jax.Array  # ‖u‖₂ over the whole leaf
    grad_norm: jax.Array  # ‖g‖₂ over the whole leaf
    rate_mean: Optional[jax.Array] = None  # mean of r = |u| / |g| over the coordinates with g ≠ 0
    rate_min: Optional[jax.Array] = None
    rate_max: Optional[jax.Array] = None
    frac_below: Optional[jax.Array] = None  # fraction of those coordinates whose rate < threshold


class MonitorState(NamedTuple):
    inner_state: Any
    diagnostics: Any  # the params' tree with a LeafDiagnostics per leaf


def _leaf_diagnostics(grad, update, threshold, per_coordinate: bool) -> LeafDiagnostics:
    """Both norms, and |u| / |g| statistics over the coordinates where g ≠ 0.

    A coordinate with g = 0 has no rate to speak of (0/0 for Adagrad, u/0 with
    momentum), so it is left out; a leaf whose gradient is 0 everywhere
    reports NaN rates and a NaN fraction.
    """
    dtype = nx.accumulator_dtype(grad)
    g = jnp.abs(jnp.asarray(grad).astype(dtype))
    u = jnp.abs(jnp.asarray(update).astype(dtype))
    norms = LeafDiagnostics(update_norm=jnp.sqrt(jnp.sum(u * u)), grad_norm=jnp.sqrt(jnp.sum(g * g)))
    if not per_coordinate:
        return norms
    seen = g > 0
    rate = u / jnp.where(seen, g, 1)
    count = jnp.sum(seen, dtype=dtype)
    # With no coordinate seen, mean and fraction are 0/0 = NaN already; min and max would be ±inf.
    none = jnp.where(count > 0, 0, jnp.nan).astype(dtype)
    return norms._replace(
        rate_mean=jnp.sum(jnp.where(seen, rate, 0)) / count,
        rate_min=jnp.min(jnp.where(seen, rate, jnp.inf), initial=jnp.inf) + none,
        rate_max=jnp.max(jnp.where(seen, rate, -jnp.inf), initial=-jnp.inf) + none,
        frac_below=jnp.sum(seen & (rate < threshold), dtype=dtype) / count,
    )


def monitor(
    tx: GradientTransformation, threshold: float = 1e-4, per_coordinate: bool = True
) -> GradientTransformation:
    """Wrap ``tx`` to record, at every update, each leaf's effective learning rate.

        rᵢ = |uᵢ| / |gᵢ|     for every coordinate i with gᵢ ≠ 0,

    where g is the gradient given to ``update`` and u the update ``tx``
    returns (so r includes the learning rate, momentum, weight decay: all of
    ``tx``). Plain SGD has r = η everywhere; Adagrad r = η / (√G + ε), which
    shrinks as G grows; RMSProp's r follows the recent gradient scale and does
    not vanish. Per leaf the state keeps the mean, min and max of r, the
    fraction of coordinates with r < ``threshold`` (stalled ones), and ‖u‖₂
    and ‖g‖₂; read them with :func:`monitor_stats`.

    Coordinates with g = 0 are left out of the rate statistics (a leaf with
    none left reports NaN rates). With momentum, a coordinate whose gradient
    is momentarily tiny has a huge r and dominates the mean; ‖u‖₂ / ‖g‖₂, the
    g²-weighted RMS of r, is the robust summary of a leaf's rate. Updates pass
    through unchanged, and :func:`adaptx.set_hyperparams` reaches ``tx``'s
    hyperparameters through the wrapper.

    Cost: the rate statistics take several passes over every parameter, the
    norms two; on a CPU, where an optimizer step is memory-bound, that is
    visible (see benchmarks/RESULTS_sweeps.md). ``per_coordinate=False``
    keeps only the norms, and so ‖u‖₂ / ‖g‖₂, at a fraction of the cost.

    Example::

        tx = adaptx.monitor(adaptx.adagrad(0.1), threshold=1e-3)
        updates, state = tx.update(grads, state)
        adaptx.monitor_stats(state)["rate_mean"]   # the params' tree of scalars
    """
    check_range("threshold", threshold, "eps")

    def diagnose(grads, updates):
        # Materialise the update once: otherwise XLA recomputes tx's arithmetic
        # inside each of the statistics' reductions.
        grads, updates = jax.lax.optimization_barrier((grads, updates))
        return jax.tree.map(lambda g, u: _leaf_diagnostics(g, u, threshold, per_coordinate), grads, updates)

    def init(params):
        blank = jax.eval_shape(diagnose, params, params)
        nans = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), blank)
        return MonitorState(tx.init(params), nans)

    def update(grads, state, params=None, **extra_args):
        updates, inner = tx.update(grads, state.inner_state, params, **extra_args)
        return updates, MonitorState(inner, diagnose(grads, updates))

    return GradientTransformation(init, update)


def monitor_stats(state) -> dict:
    """The last update's diagnostics from a state holding one :func:`monitor`.

    Returns ``{"update_norm", "grad_norm", "norm_ratio", "rate_mean",
    "rate_min", "rate_max", "frac_below"}`` (the last four unless the monitor
    keeps norms only), each the params' tree of scalars (NaN before the first
    update; ``norm_ratio`` is ‖u‖₂ / ‖g‖₂), plus ``"global_update_norm"`` and
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
    kept = jax.tree.leaves(diagnostics, is_leaf=is_stats)
    stats = {
        name: jax.tree.map(lambda d: getattr(d, name), diagnostics, is_leaf=is_stats)
        for name in LeafDiagnostics._fields
        if not kept or getattr(kept[0], name) is not None
    }
    stats["norm_ratio"] = jax.tree.map(jnp.divide, stats["update_norm"], stats["grad_norm"])
    for name in ("update_norm", "grad_norm"):
        squares = [jnp.square(n) for n in jax.tree.leaves(stats[name])]
        stats["global_" + name] = jnp.sqrt(sum(squares)) if squares else jnp.zeros([])
    return stats
