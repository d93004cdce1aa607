"""The adaptive family built on Adam's moments: RAdam, AdaBelief, Yogi, Lion and LAMB's trust ratio.

One block per paper, each with its equation; the aliases composing them are in
``family_aliases``. Blocks that need the step take ``count`` as
:func:`adaptx.scale_by_adam` does, so an optimizer's state has one count.
"""
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.adam import AdamMoments, ScaleByAdamState, _is_zero, init_moments
from adaptx._src.base import EmptyState, GradientTransformation
from adaptx._src.validate import RANGE_OF, RANGES, check_range, check_tree_match

# The ranges of this module's hyperparameters, by name (append-only beside validate.RANGES).
RANGES.update(
    threshold=(0.0, math.inf, True, False),
    b3=(0.0, 1.0, True, False),
    ademamix_alpha=(0.0, math.inf, True, False),
    initial_accumulator_value=(0.0, math.inf, True, False),
)
RANGES.update(
    eta_minus=(0.0, 1.0, False, False),
    eta_plus=(1.0, math.inf, False, False),
    min_step_size=(0.0, math.inf, True, False),
    max_step_size=(0.0, math.inf, False, False),
)
RANGE_OF.update(threshold="threshold", b3="b3", initial_accumulator_value="initial_accumulator_value",
                eta_minus="eta_minus", eta_plus="eta_plus", min_step_size="min_step_size",
                max_step_size="max_step_size")


class ScaleByLionState(NamedTuple):
    mu: Any


class ScaleByNovogradState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any  # one scalar per leaf: the EMA of ‖g‖²


class NovogradMoments(NamedTuple):
    mu: Any
    nu: Any


class ScaleByAdanState(NamedTuple):
    count: jax.Array
    mu: Any  # EMA of g
    delta: Any  # EMA of g − g_prev
    nu: Any  # EMA of |g + c·(g − g_prev)|²
    prev: Any  # g_prev


class AdanMoments(NamedTuple):
    mu: Any
    delta: Any
    nu: Any
    prev: Any


class ScaleByAdemamixState(NamedTuple):
    count: jax.Array
    mu: Any  # fast EMA, β₁
    mu_slow: Any  # slow EMA, β₃, never bias-corrected
    nu: Any


class AdemamixMoments(NamedTuple):
    mu: Any
    mu_slow: Any
    nu: Any


class ScaleByRpropState(NamedTuple):
    step_size: Any  # Δ per coordinate (complex leaves: Δ of the real part + i·Δ of the imaginary part)
    prev: Any  # the previous gradient, 0 where its sign flipped


def _nesterov_or_plain(mu, g, b1, bias1, bias1_next, nesterov):
    """m̂ = m/(1 − β₁ᵗ), or with ``nesterov`` β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ) (optax's form)."""
    if not nesterov:
        return mu / nx.cast(bias1, mu)
    beta, complement = nx.split_rate(b1)
    return (nx.cast(beta, mu) * mu / nx.cast(bias1_next, mu)
            + nx.cast(complement, mu) * g.astype(mu.dtype) / nx.cast(bias1, mu))


def _first_bias(b1, step, nesterov):
    return nx.bias_correction(b1, step), (nx.bias_correction(b1, step + 1) if nesterov else None)


def radam_rectification(b2, step):
    """(ρₜ, rₜ): the SMA length ρₜ = ρ∞ − 2t·β₂ᵗ/(1 − β₂ᵗ), ρ∞ = 2/(1 − β₂) − 1, and
    rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ)), scalars of the step (rₜ is NaN-free only for ρₜ > 4)."""
    dtype = nx.scalar_dtype()
    complement = jnp.asarray(nx.split_rate(b2).complement, dtype)
    bias2 = nx.bias_correction(b2, step)
    t = step.astype(dtype)
    rho_inf = 2 / complement - 1
    rho = rho_inf - 2 * t * (1 - bias2) / bias2
    safe = jnp.maximum(rho, 4.0)  # rₜ is real for ρₜ ≥ 4 only; the threshold picks m̂ below it
    r = jnp.sqrt((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe))
    return rho, r


def scale_by_radam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, threshold: float = 5.0,
    *, nesterov: bool = False, eps_before_correction: bool = False,
    mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Rectified Adam's direction (Liu et al., 2020, Algorithm 2).

        m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·|g|²,   m̂ = m / (1 − β₁ᵗ)
        ρₜ = ρ∞ − 2t·β₂ᵗ / (1 − β₂ᵗ),   ρ∞ = 2 / (1 − β₂) − 1
        u = rₜ · m̂ / (√(v / (1 − β₂ᵗ) + ε_root) + ε)   if ρₜ > ρ_min (``threshold``),   else u = m̂
        rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))

    The paper's box tests ρₜ > 4 and has no ε; its code, torch.optim and optax
    use 5 (optax tests ρₜ ≥ 5, equal but on a measure-zero set). ``nesterov``
    is optax's: m̂ = β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ).
    ``eps_before_correction`` adds ε to √v before the bias correction,
    u = rₜ·m̂·√(1 − β₂ᵗ)/(√v + ε), torch.optim.RAdam's form. Complex g: |g|²
    real, m complex. ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root), ("threshold", threshold)):
        check_range(name, value)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        return nx.block_state(ScaleByAdamState, AdamMoments, nx.initial_count(count), mu, nu)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        bias1, bias1_next = _first_bias(b1, step, nesterov)
        bias2 = nx.bias_correction(b2, step)
        rho, r = radam_rectification(b2, step)
        rectified = rho > jnp.asarray(threshold, rho.dtype)
        if eps_before_correction:
            r = r * jnp.sqrt(bias2)

        def moments(mu, nu, g):
            mu, nu = nx.ema(mu, g, b1), nx.ema(nu, nx.abs_sq(g, nu), b2)
            nu_hat = nu if eps_before_correction else nu / nx.cast(bias2, nu)
            return mu, nu, nu_hat + nx.cast(eps_root, nu) if not _is_zero(eps_root) else nu_hat

        mu, nu, nu_hat = nx.unzip(jax.tree.map(moments, state.mu, state.nu, updates), updates, 3)

        def leaf(m, root, g):
            m_hat = _nesterov_or_plain(m, g, b1, bias1, bias1_next, nesterov)
            adaptive = nx.cast(r, root) * m_hat / (root + nx.cast(eps, root))
            return jnp.where(rectified, adaptive, m_hat).astype(g.dtype)

        out = jax.tree.map(leaf, mu, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByAdamState, AdamMoments, own, mu, nu)

    return GradientTransformation(init, update)


def scale_by_belief(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16,
    *, nesterov: bool = False, mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None,
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """AdaBelief's direction (Zhuang et al., 2020, Algorithm 2).

        m ← β₁·m + (1 − β₁)·g,    s ← β₂·s + (1 − β₂)·|g − m|² + ε_root
        u = (m / (1 − β₁ᵗ)) / (√(s / (1 − β₂ᵗ)) + ε)

    m is the new m (the paper's box and optax). The paper adds the same ε in
    both places; here, as in optax, ε_root is the one inside s (kept in the
    state) and ε the one outside the root. ``nesterov`` as in :func:`scale_by_radam`.
    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root)):
        check_range(name, value)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        return nx.block_state(ScaleByAdamState, AdamMoments, nx.initial_count(count), mu, nu)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        bias1, bias1_next = _first_bias(b1, step, nesterov)
        bias2 = nx.bias_correction(b2, step)

        def moments(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = nx.ema(nu, nx.abs_sq(g.astype(mu.dtype) - mu, nu), b2) + nx.cast(eps_root, nu)
            return mu, nu, nu / nx.cast(bias2, nu)

        mu, nu, nu_hat = nx.unzip(jax.tree.map(moments, state.mu, state.nu, updates), updates, 3)
        out = jax.tree.map(
            lambda m, root, g: (_nesterov_or_plain(m, g, b1, bias1, bias1_next, nesterov)
                                / (root + nx.cast(eps, root))).astype(g.dtype),
            mu, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByAdamState, AdamMoments, own, mu, nu)

    return GradientTransformation(init, update)


def scale_by_yogi(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3, eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6, *, bias_correction: bool = True,
    mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Yogi's direction (Zaheer et al., 2018, Algorithm 2).

        m ← β₁·m + (1 − β₁)·g,    v ← v − (1 − β₂)·sign(v − |g|²)·|g|²
        u = m̂ / (√(v̂ + ε_root) + ε),    m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)

    with m₀ = v₀ = ``initial_accumulator_value`` (the paper's experiments
    start v₀ at 1e-6, §4; optax starts both moments there). The paper's box has
    no bias correction, ``bias_correction=False`` (m̂ = m, v̂ = v); optax and
    TF-Addons correct both moments, the default here.
    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root),
                        ("initial_accumulator_value", initial_accumulator_value)):
        check_range(name, value)

    def init(params):
        mu = nx.zeros_like_tree(params, mu_dtype, initial_accumulator_value)
        nu = nx.zeros_like_tree(params, nu_dtype, initial_accumulator_value, real=True)
        return nx.block_state(ScaleByAdamState, AdamMoments, nx.initial_count(count), mu, nu)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        bias1 = nx.bias_correction(b1, step) if bias_correction else 1
        bias2 = nx.bias_correction(b2, step) if bias_correction else 1
        complement = nx.split_rate(b2).complement

        def moments(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            square = nx.abs_sq(g, nu)
            nu = nu - nx.cast(complement, nu) * jnp.sign(nu - square) * square
            nu_hat = nu / nx.cast(bias2, nu)
            return mu, nu, nu_hat + nx.cast(eps_root, nu) if not _is_zero(eps_root) else nu_hat

        mu, nu, nu_hat = nx.unzip(jax.tree.map(moments, state.mu, state.nu, updates), updates, 3)
        out = jax.tree.map(lambda m, root, g: (m / nx.cast(bias1, m) / (root + nx.cast(eps, root))).astype(g.dtype),
                           mu, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByAdamState, AdamMoments, own, mu, nu)

    return GradientTransformation(init, update)


def scale_by_lion(b1: float = 0.9, b2: float = 0.99, *, mu_dtype: Optional[Any] = None) -> GradientTransformation:
    """Lion's direction (Chen et al., 2023, Algorithm 2).

        u = sign(β₁·m + (1 − β₁)·g),    m ← β₂·m + (1 − β₂)·g

    The update interpolates with β₁ before m moves with β₂. sign(0) = 0; for
    complex g, sign(z) = z/|z| (jnp.sign, as optax). Decoupled decay and the
    learning rate follow (:func:`adaptx.lion`).
    """
    check_range("b1", b1)
    check_range("b2", b2)

    def init(params):
        return ScaleByLionState(nx.zeros_like_tree(params, mu_dtype))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "momentum")

        def leaf(m, g):
            direction = jnp.sign(nx.ema(m, g, b1))
            return nx.ema(m, g, b2), direction.astype(g.dtype)

        mu, out = nx.unzip(jax.tree.map(leaf, state.mu, updates), updates)
        return out, ScaleByLionState(mu)

    return GradientTransformation(init, update)


def scale_by_trust_ratio() -> GradientTransformation:
    """LAMB's layer-wise trust ratio (You et al., 2020, Algorithm 2, φ = identity).

        u = g · ‖θ‖₂ / ‖g‖₂,   each norm over one leaf;   u = g when either norm is 0

    Placed after the Adam direction and the decoupled decay (r + λθ), before
    the learning rate. The norms are taken in the accumulator dtype.
    """
    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("scale_by_trust_ratio needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")

        def squared_norm(x):
            return jnp.sum(nx.abs_sq(x, nx.real_accumulator_dtype(x)))

        norms = nx.safe_sqrt((jax.tree.map(squared_norm, params), jax.tree.map(squared_norm, updates)))

        def leaf(g, param_norm, update_norm):
            zero = (param_norm == 0) | (update_norm == 0)
            ratio = jnp.where(zero, 1, param_norm / jnp.where(zero, 1, update_norm))
            return (g.astype(nx.accumulator_dtype(g)) * ratio.astype(nx.real_accumulator_dtype(g))).astype(g.dtype)

        return jax.tree.map(leaf, updates, *norms), state

    return GradientTransformation(lambda params: EmptyState(), update)


def scale_by_rprop(
    learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2, min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    """Rprop's step, without weight-backtracking (Riedmiller & Braun, 1993; iRprop−, Igel & Hüsken, 2000).

        s = g·g_prev,    Δ ← clip(Δ·(η₊ if s > 0, η₋ if s < 0, else 1), Δ_min, Δ_max)
        g ← 0 where s < 0,    u = sign(g)·Δ,    g_prev ← g

    Δ₀ = ``learning_rate`` (read at ``init`` only, as torch.optim.Rprop reads
    ``lr``). This is torch.optim.Rprop's step; follow it with ``scale(-1)``
    (:func:`adaptx.rprop`). optax.rprop returns the step proposed one update
    earlier (its first update is 0): the same rule, one step late. Complex
    leaves step their real and imaginary parts independently, as torch does.
    """
    for name, value in (("learning_rate", learning_rate), ("eta_minus", eta_minus), ("eta_plus", eta_plus),
                        ("min_step_size", min_step_size), ("max_step_size", max_step_size)):
        check_range(name, value)

    def init(params):
        def initial_step(p):
            dtype = nx.accumulator_dtype(p)
            fill = learning_rate * (1 + 1j) if jnp.issubdtype(dtype, jnp.complexfloating) else learning_rate
            return nx.full_like_param(p, fill, dtype)

        return ScaleByRpropState(jax.tree.map(initial_step, params), nx.zeros_like_tree(params))

    def real_step(g, prev, step_size):
        product = g * prev
        dt = step_size.dtype
        factor = jnp.where(product > 0, nx.cast(eta_plus, step_size),
                           jnp.where(product < 0, nx.cast(eta_minus, step_size), jnp.ones([], dt)))
        step_size = jnp.clip(step_size * factor, nx.cast(min_step_size, step_size), nx.cast(max_step_size, step_size))
        g = jnp.where(product < 0, jnp.zeros([], g.dtype), g)
        return jnp.sign(g).astype(dt) * step_size, g, step_size

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.prev, "previous gradient")

        def leaf(g, prev, step_size):
            g = g.astype(prev.dtype)
            if not jnp.iscomplexobj(g):
                return real_step(g, prev, step_size)
            parts = [real_step(part(g), part(prev), part(step_size)) for part in (jnp.real, jnp.imag)]
            return tuple(jax.lax.complex(re, im) for re, im in zip(*parts))

        out, prev, step_size = nx.unzip(jax.tree.map(leaf, updates, state.prev, state.step_size), updates, 3)
        out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
        return out, ScaleByRpropState(step_size, prev)

    return GradientTransformation(init, update)


def scale_by_novograd(
    b1: float = 0.9, b2: float = 0.25, eps: float = 1e-6, eps_root: float = 0.0, weight_decay: float = 0.0,
    *, mu_dtype: Optional[Any] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """NovoGrad's direction (Ginsburg et al., 2019, Algorithm 1): a second moment per layer (leaf).

        v₁ = ‖g₁‖²,    v ← β₂·v + (1 − β₂)·‖g‖²                        (‖·‖ over the leaf)
        m₁ = g₁/(√(v₁ + ε_root) + ε) + λ·θ,    m ← β₁·m + g/(√(v + ε_root) + ε) + λ·θ,    u = m

    The weight decay λ sits inside the momentum, as in the paper and optax;
    ε_root is optax's (0 in the paper). ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root),
                        ("weight_decay", weight_decay)):
        check_range(name, value)

    def init(params):
        nu = jax.tree.map(lambda p: jnp.zeros([], nx.real_accumulator_dtype(p)), params)
        return nx.block_state(ScaleByNovogradState, NovogradMoments, nx.initial_count(count),
                              nx.zeros_like_tree(params, mu_dtype), nu)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("scale_by_novograd needs params: call update(grads, state, params)")
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        first = step == 1

        def norms(nu, g):
            square = jnp.sum(nx.abs_sq(g, nu))
            return jnp.where(first, square, nx.ema(nu, square, b2))

        nu = jax.tree.map(norms, state.nu, updates)
        plus_root = jax.tree.map(lambda v: v + nx.cast(eps_root, v), nu) if not _is_zero(eps_root) else nu

        def leaf(mu, root, g, p):
            term = g.astype(mu.dtype) / (root + nx.cast(eps, root)).astype(mu.dtype)
            term = term + nx.cast(weight_decay, mu) * p.astype(mu.dtype)
            mu = jnp.where(first, term, nx.cast(nx.rate_value(b1), mu) * mu + term)
            return mu, mu.astype(g.dtype)

        mu, out = nx.unzip(jax.tree.map(leaf, state.mu, nx.safe_sqrt(plus_root), updates, params), updates)
        return out, nx.block_state(ScaleByNovogradState, NovogradMoments, own, mu, nu)

    return GradientTransformation(init, update)


def scale_by_adan(
    b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8, eps_root: float = 1e-8,
    *, diff_weight: Optional[float] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Adan's direction (Xie et al., 2022, Algorithm 1, with its code's bias correction).

        Δ = g − g_prev (0 on the first step),    c = β₂ (``diff_weight``)
        m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·Δ,   n ← β₃·n + (1 − β₃)·|g + c·Δ|²
        u = (m̂ + c·v̂) / (√(n̂ + ε_root) + ε),    x̂ = x / (1 − βᵗ)

    β's are decay rates (the paper writes 1 − β: its β₁ = 0.02, β₂ = 0.08,
    β₃ = 0.01), so the paper's (1 − β₂) weight on Δ is c = β₂ here, as in its
    official code. optax.adan weighs Δ by 1 − β₂ instead: ``diff_weight=1 − β₂``.
    The paper's box has no bias correction; its code and optax correct each
    moment, as here. ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3), ("eps", eps), ("eps_root", eps_root)):
        check_range(name, value)
    c = nx.rate_value(b2) if diff_weight is None else diff_weight

    def init(params):
        fields = [nx.zeros_like_tree(params) for _ in range(2)] + [nx.zeros_like_tree(params, real=True),
                                                                    nx.zeros_like_tree(params)]
        return nx.block_state(ScaleByAdanState, AdanMoments, nx.initial_count(count), *fields)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        first = step == 1
        bias1, bias2, bias3 = (nx.bias_correction(b, step) for b in (b1, b2, b3))

        def moments(mu, delta, nu, prev, g):
            g = g.astype(mu.dtype)
            diff = jnp.where(first, jnp.zeros([], g.dtype), g - prev)
            mu, delta = nx.ema(mu, g, b1), nx.ema(delta, diff, b2)
            nu = nx.ema(nu, nx.abs_sq(g + nx.cast(c, g) * diff, nu), b3)
            nu_hat = nu / nx.cast(bias3, nu)
            return mu, delta, nu, g, nu_hat + nx.cast(eps_root, nu) if not _is_zero(eps_root) else nu_hat

        mu, delta, nu, prev, nu_hat = nx.unzip(
            jax.tree.map(moments, state.mu, state.delta, state.nu, state.prev, updates), updates, 5)

        def leaf(m, d, root, g):
            direction = m / nx.cast(bias1, m) + nx.cast(c, m) * (d / nx.cast(bias2, d))
            return (direction / (root + nx.cast(eps, root))).astype(g.dtype)

        out = jax.tree.map(leaf, mu, delta, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByAdanState, AdanMoments, own, mu, delta, nu, prev)

    return GradientTransformation(init, update)


def _quarter_power(count):
    return count.astype(nx.scalar_dtype()) ** 0.25


def scale_by_adopt(
    b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6, *, nesterov: bool = False, use_clipping: bool = True,
    clip_value_fn=_quarter_power, mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None,
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """ADOPT's direction (Taniguchi et al., 2024, Algorithm 2, with clipping).

        step 1:  v = |g|²,  u = 0                     (the paper's v₀ = g₀², no parameter step)
        then:    m ← β₁·m + (1 − β₁)·clip(g / max(√v, ε), c),   u = m,   v ← β₂·v + (1 − β₂)·|g|²

    The gradient is normalised by the *previous* v, so g and v are
    independent. c = ``clip_value_fn(k)`` with k the updates applied before
    this one (c = k^¼, the paper's t^¼, by default); ``use_clipping=False``
    drops it (Algorithm 1). ``nesterov`` as optax: u = β₁·m + (1 − β₁)·clip(...).
    optax.contrib.adopt's arguments and defaults. ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps)):
        check_range(name, value)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        return nx.block_state(ScaleByAdamState, AdamMoments, nx.initial_count(count), mu, nu)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        first = step == 1
        limit = jnp.asarray(clip_value_fn(step - 1), nx.scalar_dtype()) if use_clipping else None
        roots = nx.safe_sqrt(state.nu)

        def leaf(mu, nu, root, g):
            square = nx.abs_sq(g, nu)
            normalised = g.astype(mu.dtype) / jnp.maximum(root, nx.cast(eps, root)).astype(mu.dtype)
            if use_clipping:
                bound = limit.astype(nu.dtype)
                if jnp.iscomplexobj(normalised):
                    normalised = jax.lax.complex(jnp.clip(normalised.real, -bound, bound),
                                                 jnp.clip(normalised.imag, -bound, bound))
                else:
                    normalised = jnp.clip(normalised, -bound, bound)
            new_mu = nx.ema(mu, normalised, b1)
            out = nx.ema(new_mu, normalised, b1) if nesterov else new_mu
            zero = jnp.zeros([], mu.dtype)
            return (jnp.where(first, mu, new_mu), jnp.where(first, square, nx.ema(nu, square, b2)),
                    jnp.where(first, zero, out).astype(g.dtype))

        mu, nu, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, roots, updates), updates, 3)
        return out, nx.block_state(ScaleByAdamState, AdamMoments, own, mu, nu)

    return GradientTransformation(init, update)


def scale_by_ademamix(
    b1: float = 0.9, b2: float = 0.999, b3: float = 0.9999, alpha: float = 5.0, eps: float = 1e-8,
    eps_root: float = 0.0, *, mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None,
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """AdEMAMix's direction (Pagliardini et al., 2024, Algorithm 1): a fast and a slow EMA.

        m₁ ← β₁·m₁ + (1 − β₁)·g,   m₂ ← β₃·m₂ + (1 − β₃)·g,   v ← β₂·v + (1 − β₂)·|g|²
        u = (m₁ / (1 − β₁ᵗ) + α·m₂) / (√(v / (1 − β₂ᵗ) + ε_root) + ε)

    m₂ is not bias-corrected (the paper lets it fill slowly). The paper's α
    and β₃ warm-ups are schedules of the step: in :func:`adaptx.ademamix` pass
    them as ``alpha`` / ``b3`` (read at the updates applied so far, as optax).
    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3), ("eps", eps), ("eps_root", eps_root)):
        check_range(name, value)
    check_range("alpha", alpha, "ademamix_alpha")  # "alpha" alone is torch RMSprop's decay (compat.torch)

    def init(params):
        mu, slow = nx.zeros_like_tree(params, mu_dtype), nx.zeros_like_tree(params, mu_dtype)
        return nx.block_state(ScaleByAdemamixState, AdemamixMoments, nx.initial_count(count), mu, slow,
                              nx.zeros_like_tree(params, nu_dtype, real=True))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        bias1, bias2 = nx.bias_correction(b1, step), nx.bias_correction(b2, step)

        def moments(mu, slow, nu, g):
            mu, slow, nu = nx.ema(mu, g, b1), nx.ema(slow, g, b3), nx.ema(nu, nx.abs_sq(g, nu), b2)
            nu_hat = nu / nx.cast(bias2, nu)
            return mu, slow, nu, nu_hat + nx.cast(eps_root, nu) if not _is_zero(eps_root) else nu_hat

        mu, slow, nu, nu_hat = nx.unzip(jax.tree.map(moments, state.mu, state.mu_slow, state.nu, updates), updates, 4)
        out = jax.tree.map(
            lambda m, s, root, g: ((m / nx.cast(bias1, m) + nx.cast(alpha, s) * s)
                                   / (root + nx.cast(eps, root))).astype(g.dtype),
            mu, slow, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByAdemamixState, AdemamixMoments, own, mu, slow, nu)

    return GradientTransformation(init, update)


class CorrectedRmsState(NamedTuple):
    count: jax.Array
    nu: Any


class CorrectedRmsMoment(NamedTuple):
    nu: Any


def scale_by_corrected_rms(
    b2: float = 0.999, eps: float = 1e-8, *, nu_dtype: Optional[Any] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Adam's direction without the first moment (schedule-free AdamW's base step, Defazio et al., 2024).

        v ← β₂·v + (1 − β₂)·|g|²,    u = g / (√(v / (1 − β₂ᵗ)) + ε)

    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    check_range("b2", b2)
    check_range("eps", eps)

    def init(params):
        return nx.block_state(CorrectedRmsState, CorrectedRmsMoment, nx.initial_count(count),
                              nx.zeros_like_tree(params, nu_dtype, real=True))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "second moment")
        step, own = nx.this_step(count, state)
        bias2 = nx.bias_correction(b2, step)
        nu = jax.tree.map(lambda v, g: nx.ema(v, nx.abs_sq(g, v), b2), state.nu, updates)
        roots = nx.safe_sqrt(jax.tree.map(lambda v: v / nx.cast(bias2, v), nu))
        out = jax.tree.map(lambda g, root: (g.astype(nx.accumulator_dtype(g)) / (root + nx.cast(eps, root))).astype(g.dtype),
                           updates, roots)
        return out, nx.block_state(CorrectedRmsState, CorrectedRmsMoment, own, nu)

    return GradientTransformation(init, update)


RANGES.update(
    estim_lr0=(0.0, math.inf, False, False),
    estim_lr_coef=(0.0, math.inf, False, False),
)
RANGE_OF.update(estim_lr0="estim_lr0", estim_lr_coef="estim_lr_coef")


class ScaleByProdigyState(NamedTuple):
    count: jax.Array
    mu: Any  # EMA of d·g
    nu: Any  # EMA of d²·|g|²
    grad_sum: Any  # s, kept divided by d₀ and without the paper's (1 − β₃) (optax's scaling)
    params0: Any  # x₀, the params at init
    estim_lr: jax.Array  # d, the distance estimate
    numerator: jax.Array  # r, scaled as s


class ProdigyMoments(NamedTuple):
    mu: Any
    nu: Any
    grad_sum: Any
    params0: Any
    estim_lr: jax.Array
    numerator: jax.Array


def _real(x):
    """The real dtype of ``x``'s (float for complex): what a real scalar is cast to before it scales x."""
    return jnp.finfo(x.dtype).dtype


def _tree_sum(tree, scalar):
    """Σ over leaves of per-leaf scalars, in the scalar dtype (0 for an empty tree)."""
    return sum((leaf.astype(scalar) for leaf in jax.tree.leaves(tree)), jnp.zeros([], scalar))


def _initial_point(param):
    """x₀ for the state: a copy, since the state must not hold the caller's buffer (a donated step
    would delete it). A ShapeDtypeStruct describes only the layout (an abstract init, as for
    checkpoint.restore, whose values replace it), so it gets zeros of that layout."""
    if isinstance(param, jax.ShapeDtypeStruct):
        return nx.full_like_param(param, 0, param.dtype)
    return jnp.array(param, copy=True)


def scale_by_prodigy(
    learning_rate: float = 1.0, b1: float = 0.9, b2: float = 0.999, b3: Optional[float] = None, eps: float = 1e-8,
    estim_lr0: float = 1e-6, estim_lr_coef: float = 1.0, weight_decay: float = 0.0, *,
    safeguard_warmup: bool = False, bias_correction: bool = True, weight_decay_mask: Optional[Any] = None,
    mu_dtype: Optional[Any] = None, nu_dtype: Optional[Any] = None, count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Prodigy's direction (Mishchenko & Defazio, 2024, the algorithm's Adam version), before −γ.

        m ← β₁·m + (1 − β₁)·d·g,    v ← β₂·v + (1 − β₂)·d²·|g|²
        r ← β₃·r + γ·d²·c·⟨g, x₀ − x⟩,    s ← β₃·s + γ·d²·c·g      (β₃ = √β₂ unless given)
        d' = max(d, κ·r / ‖s‖₁),    u = d·c·(m / (√v + d'·ε) + λ·x)

    γ = ``learning_rate`` (its schedule's value; the alias multiplies by −γ
    after), κ = ``estim_lr_coef``, d₀ = ``estim_lr0`` (read at init, so a
    construction argument), c = √(1 − β₂ᵗ)/(1 − β₁ᵗ) with ``bias_correction``
    (optax) and 1 in the paper's box. ε meets d' (optax, the authors' code; the
    box writes d). ``safeguard_warmup`` drops γ·c from s (optax, the authors'
    code). λ: decoupled decay scaled by d·c·γ as optax. r and s are kept
    divided by d₀ and without the box's (1 − β₃): both factors cancel in r/‖s‖₁,
    and d²/d₀ keeps their float32 magnitudes near the gradients'. Where
    ‖s‖₁ = 0 (only zero gradients so far) d stays; optax's d turns NaN there.
    ``weight_decay_mask``: a tree of bools like the params (or a function of the params
    returning one), decay only where True (optax's; the decay sits inside this block because
    it is scaled by d, so :func:`adaptx.masked` cannot reach it).
    Complex g: |g|², ⟨g, y⟩ = Re Σ conj(g)·y, ‖s‖₁ = Σ |Re s| + |Im s| (complex as pairs of
    reals). ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    for name, value in (("learning_rate", learning_rate), ("b1", b1), ("b2", b2), ("eps", eps),
                        ("estim_lr0", estim_lr0), ("estim_lr_coef", estim_lr_coef), ("weight_decay", weight_decay)):
        check_range(name, value)
    if b3 is not None:
        check_range("b3", b3)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        scalar = nx.scalar_dtype()
        params0 = jax.tree.map(_initial_point, params)
        return nx.block_state(ScaleByProdigyState, ProdigyMoments, nx.initial_count(count), mu, nu,
                              nx.zeros_like_tree(params, mu_dtype), params0, jnp.asarray(estim_lr0, scalar),
                              jnp.zeros([], scalar))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("scale_by_prodigy needs params: call update(grads, state, params)")
        check_tree_match(updates, state.mu, "first moment")
        check_tree_match(params, state.params0, "initial params", subject="params")
        step, own = nx.this_step(count, state)
        scalar = nx.scalar_dtype()
        d = state.estim_lr
        beta3 = jnp.sqrt(jnp.asarray(nx.rate_value(b2), scalar)) if b3 is None else jnp.asarray(nx.rate_value(b3), scalar)
        c = (jnp.sqrt(nx.bias_correction(b2, step)) / nx.bias_correction(b1, step)) if bias_correction else 1.0
        dlr = d * jnp.asarray(learning_rate, scalar) * c
        ratio = d / jnp.asarray(estim_lr0, scalar)
        s_weight = ratio * (d if safeguard_warmup else dlr)

        def inner(g, p0, p):
            dt = nx.accumulator_dtype(g)
            return jnp.sum(jnp.real(jnp.conj(g.astype(dt)) * (p0.astype(dt) - p.astype(dt))))

        numerator = beta3 * state.numerator + ratio * dlr * _tree_sum(
            jax.tree.map(inner, updates, state.params0, params), scalar)

        def moments(mu, nu, s, g):
            dg = g.astype(mu.dtype) * nx.cast(d, _real(mu))
            mu, nu = nx.ema(mu, dg, b1), nx.ema(nu, nx.abs_sq(dg, nu), b2)
            s = nx.cast(beta3, _real(s)) * s + nx.cast(s_weight, _real(s)) * g.astype(s.dtype)
            return mu, nu, s

        mu, nu, s = nx.unzip(jax.tree.map(moments, state.mu, state.nu, state.grad_sum, updates), updates, 3)
        # ‖s‖₁ over real coordinates: a complex entry counts |Re| + |Im|, as the pair of reals it steps
        denominator = _tree_sum(jax.tree.map(lambda x: jnp.sum(jnp.abs(jnp.real(x)) + jnp.abs(jnp.imag(x))), s),
                                scalar)
        positive = denominator > 0
        estimate = nx.cast(estim_lr_coef, denominator) * numerator / jnp.where(positive, denominator, 1)
        new_d = jnp.where(positive, jnp.maximum(d, estimate), d)
        step_scale = d * c

        def leaf(m, root, g, p, decays=True):
            dt = m.dtype
            u = m / (root + (new_d * nx.cast(eps, new_d)).astype(root.dtype))
            if decays is not False and not _is_zero(weight_decay):
                u = u + jnp.where(decays, nx.cast(weight_decay, _real(m)), 0) * p.astype(dt)
            return (nx.cast(step_scale, _real(m)) * u).astype(g.dtype)

        masks = () if weight_decay_mask is None else (
            weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask,)
        if masks and jax.tree.structure(masks[0]) != jax.tree.structure(params):
            raise ValueError(f"weight_decay_mask must be a tree of bools shaped like the params' tree,"
                             f" one per leaf: got {jax.tree.structure(masks[0])} for {jax.tree.structure(params)}")
        out = jax.tree.map(leaf, mu, nx.safe_sqrt(nu), updates, params, *masks)
        return out, nx.block_state(ScaleByProdigyState, ProdigyMoments, own, mu, nu, s, state.params0, new_d,
                                   numerator)

    return GradientTransformation(init, update)
