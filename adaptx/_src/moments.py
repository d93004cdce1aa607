"""Momentum blocks: exponential moving average, heavy-ball trace, bias correction."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.base import EmptyState, GradientTransformation
from adaptx._src.validate import check_range, check_tree_match


class MomentState(NamedTuple):
    mu: Any


class DampedMomentState(NamedTuple):
    count: jax.Array  # steps taken: the first seeds the buffer (MomentState when the caller counts)
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

    @nx.stored
    def update(updates, state, params=None, **extra_args):
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
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Heavy-ball momentum (Polyak, 1964; Nesterov form per Sutskever et al., 2013).

        m ← β·m + g,    u = m          (or u = g + β·m with ``nesterov``)

    with β = ``decay`` and m₀ = 0: optax's ``trace`` and torch.optim.SGD's
    buffer with ``dampening=0``.

    ``dampening`` τ gives torch.optim.SGD's damped buffer, which starts at the
    first gradient rather than at zero (so τ does not touch step 1):

        m₁ = g₁,    m ← β·m + (1 − τ)·g

    It needs the step: ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    check_range("decay", decay)
    if dampening is not None:
        check_range("dampening", dampening)

    def init(params):
        mu = nx.zeros_like_tree(params, mu_dtype)
        own = nx.initial_count(count) if dampening is not None else None
        return nx.block_state(DampedMomentState, MomentState, own, mu)

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "momentum buffer")
        own = None
        if dampening is not None:
            step, own = nx.this_step(count, state)
            first = step == 1

        def leaf(m, g):
            beta = nx.cast(nx.rate_value(decay), m)
            g_m = g.astype(m.dtype)
            if dampening is None:
                m = beta * m + g_m
            else:
                m = jnp.where(first, g_m, beta * m + nx.cast(nx.split_rate(dampening).complement, m) * g_m)
            u = g_m + beta * m if nesterov else m
            return m, u.astype(g.dtype)

        mu, out = nx.unzip(jax.tree.map(leaf, state.mu, updates), updates)
        return out, nx.block_state(DampedMomentState, MomentState, own, mu)

    return GradientTransformation(init, update)


def bias_correction(decay: float, *, count: Optional[jax.Array] = None) -> GradientTransformation:
    """Divide by 1 − βᵗ at step t (from 1), turning a zero-initialised EMA into an unbiased mean.

        u = g / (1 − βᵗ)

    Place it after :func:`ema` with the same ``decay`` (Kingma & Ba, 2014, §3).
    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    check_range("decay", decay)

    def init(params):
        return nx.block_state(CountState, EmptyState, nx.initial_count(count))

    def update(updates, state, params=None, **extra_args):
        step, own = nx.this_step(count, state)
        bias = nx.bias_correction(decay, step)
        return jax.tree.map(lambda g: (g / bias.astype(nx.real_accumulator_dtype(g))).astype(g.dtype), updates), nx.block_state(CountState, EmptyState, own)

    return GradientTransformation(init, update)
