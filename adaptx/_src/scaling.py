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


def _rescale(updates, second_moments, eps, eps_in_sqrt):
    """g / (√v + ε), or g / √(v + ε) when ``eps_in_sqrt``, leaf by leaf, in the moments' precision."""
    def lift(g):
        return g.astype(nx.accumulator_dtype(g))

    if eps_in_sqrt:
        return jax.tree.map(lambda g, v: (lift(g) * lax.rsqrt(v + nx.cast(eps, v))).astype(g.dtype),
                            updates, second_moments)
    return jax.tree.map(lambda g, root: (lift(g) / (root + nx.cast(eps, root))).astype(g.dtype),
                        updates, nx.safe_sqrt(second_moments))


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

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient accumulator")

        nu = jax.tree.map(lambda acc, g: acc + nx.abs_sq(g, acc), state.nu, updates)
        return _rescale(updates, nu, eps, eps_in_sqrt), AccumulatorState(nu)

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

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient average")

        nu = jax.tree.map(lambda v, g: nx.ema(v, nx.abs_sq(g, v), decay), state.nu, updates)
        if not centered:
            return _rescale(updates, nu, eps, eps_in_sqrt), RmsState(nu, None)
        mu = jax.tree.map(lambda m, g: nx.ema(m, g, decay), state.mu, updates)
        variance = jax.tree.map(lambda v, m: v - nx.abs_sq(m, v), nu, mu)
        return _rescale(updates, variance, eps, eps_in_sqrt), RmsState(nu, mu)

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

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "squared-gradient average")

        nu = jax.tree.map(lambda v, g: nx.ema(v, nx.abs_sq(g, v), rho), state.nu, updates)
        plus_eps = lambda x: x + nx.cast(eps, x)  # noqa: E731
        step_root, grad_root = nx.safe_sqrt((jax.tree.map(plus_eps, state.delta), jax.tree.map(plus_eps, nu)))

        def leaf(delta_acc, step_rms, grad_rms, g):
            delta = step_rms / grad_rms * g.astype(nx.accumulator_dtype(g))
            return nx.ema(delta_acc, nx.abs_sq(delta, delta_acc), rho), delta.astype(g.dtype)

        delta, out = nx.unzip(jax.tree.map(leaf, state.delta, step_root, grad_root, updates), updates)
        return out, AdadeltaState(nu, delta)

    return GradientTransformation(init, update)
