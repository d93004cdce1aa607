"""Adafactor's blocks: a factored second moment, update clipping and the relative step size.

Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
Cost", ICML 2018 (arXiv:1804.04235), Algorithms 4 and 5 and §§5–7.
"""
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np

from adaptx._src import numerics as nx
from adaptx._src.base import EmptyState, GradientTransformation
from adaptx._src.validate import RANGE_OF, RANGES, check_range, check_tree_match

# Adafactor's hyperparameters, by adaptx's names (appended: validate.py is shared).
RANGES.update(
    clipping_threshold=(1.0, math.inf, True, False),
    eps_scale=(0.0, math.inf, True, False),
    decay_offset=(0.0, math.inf, True, False),
    weight_decay_rate=(0.0, math.inf, True, False),
    decay_exponent=(-math.inf, 0.0, False, True),  # torch's and keras' beta2_decay, −c of 1 − t^(−c)
)
RANGE_OF.update({name: name for name in ("clipping_threshold", "eps_scale", "decay_offset", "weight_decay_rate")})


class FactoredState(NamedTuple):
    count: jax.Array
    v_row: Any  # per leaf: the row statistics R (the leaf's shape less its column axis), or a one-element placeholder
    v_col: Any  # per leaf: the column statistics C (less its row axis), or a one-element placeholder
    v: Any  # per leaf: the full second moment of an unfactored leaf, or a one-element placeholder


class FactoredMoments(NamedTuple):
    v_row: Any
    v_col: Any
    v: Any


def factored_axes(shape, factored: bool = True, min_dim_size_to_factor: int = 1,
                  factored_dims: str = "last") -> Optional[tuple]:
    """(row axis r, column axis c) that a leaf of ``shape`` factors over, or None (kept whole).

    ``"last"``: the last two axes (the paper's matrices; torch and keras), for
    every leaf of rank ≥ 2. ``"largest"``: the two largest axes (optax). Either
    way both must have at least ``min_dim_size_to_factor`` elements.
    """
    shape = tuple(shape)
    if not factored or len(shape) < 2:
        return None
    if factored_dims == "last":
        r, c = len(shape) - 2, len(shape) - 1
    elif factored_dims == "largest":
        order = np.argsort(shape)  # as optax: r the second largest, c the largest
        r, c = int(order[-2]), int(order[-1])
    else:
        raise ValueError(f"factored_dims must be 'last' or 'largest', got {factored_dims!r}")
    if min(shape[r], shape[c]) < min_dim_size_to_factor:
        return None
    return r, c


def _placeholder(dtype):
    return jnp.zeros((1,), dtype)  # one element, as optax: orbax cannot store zero-size arrays


def decay_rate_at(decay_rate, step, decay_offset=0) -> nx.Rate:
    """(β̂₂ₜ, 1 − β̂₂ₜ) with 1 − β̂₂ₜ = t^(−c), t = step − offset: the paper's §7.2 schedule, once per step."""
    dtype = nx.scalar_dtype()
    t = step.astype(dtype) - jnp.asarray(decay_offset, dtype)
    complement = t ** -jnp.asarray(decay_rate, dtype)
    return nx.Rate(1 - complement, complement)


def scale_by_factored_rms(
    decay_rate: float = 0.8,
    eps: float = 1e-30,
    *,
    factored: bool = True,
    min_dim_size_to_factor: int = 1,
    factored_dims: str = "last",
    decay_offset: float = 0,
    nu_dtype: Optional[Any] = None,
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Adafactor's scaling by a factored second moment (Shazeer & Stern, 2018, Algorithms 4–5).

        β̂₂ₜ = 1 − t^(−c)                                   (c = ``decay_rate``, §7.2)
        R ← β̂₂ₜ·R + (1 − β̂₂ₜ)·mean_c(G² + ε₁),  C ← β̂₂ₜ·C + (1 − β̂₂ₜ)·mean_r(G² + ε₁)
        V̂ = R·C / mean_r(R),    u = G / √V̂

    for a leaf factored over its row axis r and column axis c (means in place of
    the paper's sums give the same V̂); other leaves keep the whole
    v ← β̂₂ₜ·v + (1 − β̂₂ₜ)·(G² + ε₁), u = G / √v (Algorithm 5). ε₁ = ``eps``.
    Which leaves factor, and over which axes: :func:`factored_axes`. State is
    O(n + m) for an n×m matrix. ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    check_range("decay_rate", decay_rate)
    check_range("eps", eps)
    check_range("decay_offset", decay_offset)
    axes_of = lambda leaf: factored_axes(np.shape(leaf), factored, min_dim_size_to_factor, factored_dims)  # noqa: E731

    def init(params):
        def leaf(p):
            # Factored statistics are O(n + m): a Quantized nu_dtype keeps them (and small v) in float32.
            dtype = nx.real_accumulator_dtype(p, None if isinstance(nu_dtype, nx.Quantized) else nu_dtype)
            axes = axes_of(p)
            if axes is None:
                return _placeholder(dtype), _placeholder(dtype), nx.full_like_param(p, 0.0, dtype)
            r, c = axes
            shape = np.shape(p)
            return (jnp.zeros(shape[:c] + shape[c + 1:], dtype), jnp.zeros(shape[:r] + shape[r + 1:], dtype),
                    _placeholder(dtype))

        v_row, v_col, v = nx.unzip(jax.tree.map(leaf, params), params, 3)
        return nx.block_state(FactoredState, FactoredMoments, nx.initial_count(count), v_row, v_col, v)

    def update(updates, state, params=None, **extra_args):
        if jax.tree.structure(updates) != jax.tree.structure(state.v):
            raise ValueError(f"updates have the tree {jax.tree.structure(updates)} but the factored second"
                             f" moment was made for {jax.tree.structure(state.v)}: pass gradients with the"
                             " same tree as the params the optimizer was initialised with")
        step, own = nx.this_step(count, state)
        beta = decay_rate_at(decay_rate, step, decay_offset)

        def leaf(g, v_row, v_col, v):
            dtype = v.dtype
            square = nx.abs_sq(g, v) + nx.cast(eps, v)
            axes = axes_of(g)
            if axes is None:
                v = nx.ema(v, square, beta)
                return v_row, v_col, v, (g.astype(dtype) * lax.rsqrt(v)).astype(g.dtype)
            r, c = axes
            v_row = nx.ema(v_row, jnp.mean(square, axis=c), beta)
            v_col = nx.ema(v_col, jnp.mean(square, axis=r), beta)
            row_axis = r if r < c else r - 1  # r's place in v_row, which lacks c
            row_factor = lax.rsqrt(v_row / jnp.mean(v_row, axis=row_axis, keepdims=True))
            u = g.astype(dtype) * jnp.expand_dims(row_factor, c) * jnp.expand_dims(lax.rsqrt(v_col), r)
            return v_row, v_col, v, u.astype(g.dtype)

        v_row, v_col, v, out = nx.unzip(jax.tree.map(leaf, updates, state.v_row, state.v_col, state.v), updates, 4)
        return out, nx.block_state(FactoredState, FactoredMoments, own, v_row, v_col, v)

    return GradientTransformation(init, update)


def block_rms(x) -> jax.Array:
    """RMS(x) = √(mean x²) of one leaf (0 for an empty one), in float32 or wider."""
    x = x.astype(nx.accumulator_dtype(x))
    if x.size == 0:
        return jnp.zeros([], x.dtype)
    return jnp.sqrt(jnp.mean(nx.abs_sq(x, x.real)))


def clip_by_block_rms(threshold: float = 1.0) -> GradientTransformation:
    """Adafactor's update clipping (Shazeer & Stern, 2018, §6), leaf by leaf.

        û = u / max(1, RMS(u) / d)        (d = ``threshold``)
    """
    check_range("clipping_threshold", threshold)

    def update(updates, state, params=None, **extra_args):
        def leaf(u):
            rms = block_rms(u)
            return (u / jnp.maximum(1, rms / nx.cast(threshold, rms)).astype(u.dtype)).astype(u.dtype)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(lambda params: EmptyState(), update)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Adafactor's relative step size (Shazeer & Stern, 2018, §8): scale by the param's RMS.

        u = g · max(ε₂, RMS(θ))          (ε₂ = ``min_scale``)

    With the learning rate ρₜ this makes the step αₜ = max(ε₂, RMS(θₜ₋₁))·ρₜ.
    """
    check_range("eps_scale", min_scale)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("scale_by_param_block_rms needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")
        return jax.tree.map(
            lambda g, p: (g * jnp.maximum(nx.cast(min_scale, block_rms(p)), block_rms(p)).astype(g.dtype)),
            updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)


def relative_step_size(learning_rate, step) -> jax.Array:
    """ρₜ = min(η, 1/√t): the paper's relative step (§8, η = 10⁻²), a scalar per step."""
    dtype = nx.scalar_dtype()
    return jnp.minimum(jnp.asarray(learning_rate, dtype), lax.rsqrt(step.astype(dtype)))
