"""Adaptive per-coordinate scalings: Adagrad, RMSProp and Adadelta."""
from typing import Any, NamedTuple, Optional

import jax
import jax.lax as lax

from adaptx._src import numerics as nx
from adaptx._src.base import GradientTransformation
from adaptx._src.validate import check_range, check_tree_match


class AccumulatorState(NamedTuple):
    nu: Any


class RmsState(NamedTuple):
    nu: Any
    mu: Any  # running mean of g for the centered variant; None otherwise


class AdadeltaState(NamedTuple):
    nu: Any  # E[g²]
    delta: Any  # E[Δx²]


def _rescale(g, second_moment, eps, eps_in_sqrt):
    """g / (√v + ε), or g / √(v + ε) when ``eps_in_sqrt``."""
    eps = nx.cast(eps, second_moment)
    if eps_in_sqrt:
        return g * lax.rsqrt(second_moment + eps)
    return g / (nx.safe_sqrt(second_moment) + eps)


def accumulate_squares(
    eps: float = 1e-10,
    initial_accumulator: float = 0.0,
    eps_in_sqrt: bool = False,
    *,
    nu_dtype: Optional[Any] = None,
) -> GradientTransformation:
    """Adagrad's scaling (Duchi, Hazan & Singer, 2011, diagonal version).

        G ← G + |g|²,    u = g / (√G + ε)      (or g / √(G + ε) with ``eps_in_sqrt``)

    G starts at ``initial_accumulator`` (torch: 0, keras and optax: 0.1). Some
    tutorials accumulate a *learning rate* ε/(δ + |g|) instead; this follows
    the paper and accumulates squared gradients.
    """
    check_range("eps", eps)
    check_range("initial_accumulator", initial_accumulator)

    def init(params):
        return AccumulatorState(nx.zeros_like_tree(params, nu_dtype, initial_accumulator, real=True))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient accumulator")

        def leaf(acc, g):
            acc = acc + nx.abs_sq(g, acc)
            return acc, _rescale(g.astype(nx.accumulator_dtype(g)), acc, eps, eps_in_sqrt).astype(g.dtype)

        nu, out = nx.unzip(jax.tree.map(leaf, state.nu, updates), updates)
        return out, AccumulatorState(nu)

    return GradientTransformation(init, update)


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = False,
    centered: bool = False,
    initial_accumulator: float = 0.0,
    *,
    nu_dtype: Optional[Any] = None,
    mu_dtype: Optional[Any] = None,
) -> GradientTransformation:
    """RMSProp's scaling (Hinton, Neural Networks for ML, lecture 6e, 2012).

        v ← ρ·v + (1 − ρ)·|g|²,    u = g / (√v + ε)       (or g / √(v + ε))

    with ρ = ``decay``. ``centered`` (Graves, 2013) also tracks m ← ρ·m + (1 − ρ)·g
    and divides by √(v − |m|²) + ε instead, a running variance.
    """
    check_range("decay", decay)
    check_range("eps", eps)
    check_range("initial_accumulator", initial_accumulator)

    def init(params):
        nu = nx.zeros_like_tree(params, nu_dtype, initial_accumulator, real=True)
        return RmsState(nu, nx.zeros_like_tree(params, mu_dtype) if centered else None)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient average")

        def leaf(nu, g, mu=None):
            nu = nx.ema(nu, nx.abs_sq(g, nu), decay)
            g_acc = g.astype(nx.accumulator_dtype(g))
            if mu is None:
                return nu, None, _rescale(g_acc, nu, eps, eps_in_sqrt).astype(g.dtype)
            mu = nx.ema(mu, g, decay)
            variance = nu - nx.abs_sq(mu, nu)
            return nu, mu, _rescale(g_acc, variance, eps, eps_in_sqrt).astype(g.dtype)

        means = (state.mu,) if centered else ()
        nu, mu, out = nx.unzip(jax.tree.map(leaf, state.nu, updates, *means), updates, 3)
        return out, RmsState(nu, mu if centered else None)

    return GradientTransformation(init, update)


def scale_by_adadelta(
    rho: float = 0.9, eps: float = 1e-6, *, nu_dtype: Optional[Any] = None
) -> GradientTransformation:
    """Adadelta's unit-correcting scaling (Zeiler, 2012, Algorithm 1).

        E[g²] ← ρ·E[g²] + (1 − ρ)·|g|²
        Δ = −(√(E[Δ²] + ε) / √(E[g²] + ε))·g,   returned as u = −Δ
        E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·|Δ|²

    The paper has no learning rate; :func:`adaptx.adadelta` multiplies u by one
    (default 1.0), as torch and optax do, after Δ enters E[Δ²].
    """
    check_range("rho", rho)
    check_range("eps", eps)

    def init(params):
        return AdadeltaState(nx.zeros_like_tree(params, nu_dtype, real=True),
                             nx.zeros_like_tree(params, nu_dtype, real=True))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient average")

        def leaf(nu, delta_acc, g):
            nu = nx.ema(nu, nx.abs_sq(g, nu), rho)
            eps_ = nx.cast(eps, nu)
            delta = nx.safe_sqrt(delta_acc + eps_) / nx.safe_sqrt(nu + eps_) * g.astype(nx.accumulator_dtype(g))
            delta_acc = nx.ema(delta_acc, nx.abs_sq(delta, delta_acc), rho)
            return nu, delta_acc, delta.astype(g.dtype)

        nu, delta, out = nx.unzip(jax.tree.map(leaf, state.nu, state.delta, updates), updates, 3)
        return out, AdadeltaState(nu, delta)

    return GradientTransformation(init, update)
