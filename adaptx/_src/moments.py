"""Momentum blocks: exponential moving average, heavy-ball trace, bias correction."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.validate import check_range, check_tree_match
from adaptx._src.base import GradientTransformation


class MomentState(NamedTuple):
    mu: Any


class DampedMomentState(NamedTuple):
    count: jax.Array  # steps taken: the first one seeds the buffer with the gradient
    mu: Any


class CountState(NamedTuple):
    count: jax.Array


def ema(decay: float, *, mu_dtype: Optional[Any] = None) -> GradientTransformation:
    """Exponential moving average of the updates (Adam's first moment).

        m ← β·m + (1 − β)·g,    u = m

    with β = ``decay`` and m₀ = 0; follow with :func:`bias_correction` to
    undo the pull towards zero of the early steps (Kingma & Ba, 2014, §3).
    """
    check_range("decay", decay)

    def init(params):
        return MomentState(nx.zeros_like_tree(params, mu_dtype))

    def update(updates, state, params=None):
        check_tree_match(updates, state.mu, "moving average")
        mu = jax.tree.map(lambda m, g: nx.ema(m, g, decay), state.mu, updates)
        return jax.tree.map(lambda m, g: m.astype(g.dtype), mu, updates), MomentState(mu)

    return GradientTransformation(init, update)


def trace(
    decay: float,
    nesterov: bool = False,
    *,
    mu_dtype: Optional[Any] = None,
    dampening: Optional[float] = None,
) -> GradientTransformation:
    """Heavy-ball momentum (Polyak, 1964; Nesterov form per Sutskever et al., 2013).

        m ← β·m + g,    u = m          (or u = g + β·m with ``nesterov``)

    with β = ``decay`` and m₀ = 0. This is torch.optim.SGD's buffer with
    ``dampening=0`` and optax's ``trace``.

    ``dampening`` τ gives torch.optim.SGD's damped buffer, which starts at the
    first gradient rather than at zero (so τ does not touch step 1):

        m₁ = g₁,    m ← β·m + (1 − τ)·g
    """
    check_range("decay", decay)
    if dampening is not None:
        check_range("dampening", dampening)

    def init(params):
        mu = nx.zeros_like_tree(params, mu_dtype)
        return MomentState(mu) if dampening is None else DampedMomentState(jnp.zeros([], jnp.int32), mu)

    def update(updates, state, params=None):
        check_tree_match(updates, state.mu, "momentum buffer")
        first = dampening is not None and state.count == 0

        def step(m, g):
            beta = jnp.asarray(nx.rate_value(decay), m.dtype)
            g_m = g.astype(m.dtype)
            if dampening is None:
                m = beta * m + g_m
            else:
                undamped = jnp.asarray(nx.split_rate(dampening).complement, m.dtype)
                m = jnp.where(first, g_m, beta * m + undamped * g_m)
            u = g_m + beta * m if nesterov else m
            return m, u.astype(g.dtype)

        mu, out = nx.unzip(jax.tree.map(step, state.mu, updates), updates)
        if dampening is None:
            return out, MomentState(mu)
        return out, DampedMomentState(nx.increment(state.count), mu)

    return GradientTransformation(init, update)


def bias_correction(decay: float) -> GradientTransformation:
    """Divide by 1 − βᵗ at step t (from 1), turning a zero-initialised EMA into an unbiased mean.

        u = g / (1 − βᵗ)

    Place it after :func:`ema` with the same ``decay`` (Kingma & Ba, 2014, §3).
    """
    check_range("decay", decay)

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        count = nx.increment(state.count)
        out = jax.tree.map(
            lambda g: nx.debias(g.astype(nx.accumulator_dtype(g)), decay, count).astype(g.dtype),
            updates,
        )
        return out, CountState(count)

    return GradientTransformation(init, update)

