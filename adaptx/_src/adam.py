"""Adam and its infinity-norm and Nesterov variants, on the shared moment arithmetic."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.validate import check_range, check_tree_match
from adaptx._src.base import GradientTransformation


def _scalar_dtype():
    """Scalars shared by every leaf: float32, or float64 under jax_enable_x64.

    Read when called, not at import: x64 may be switched on (or scoped with
    ``jax.enable_x64``) after adaptx is imported.
    """
    return jnp.result_type(float)


class AdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any  # running maximum of ν for AMSGrad; None otherwise


class NadamState(NamedTuple):
    count: jax.Array
    mu_product: jax.Array  # ∏ μᵢ of the momentum schedule, in the default float dtype
    mu: Any
    nu: Any


def _adam_init(params, mu_dtype, nu_dtype, amsgrad=False):
    nu = nx.zeros_like_tree(params, nu_dtype)
    return jnp.zeros([], jnp.int32), nx.zeros_like_tree(params, mu_dtype), nu, (nu if amsgrad else None)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    *,
    eps_hat: bool = False,
    power_bias: bool = False,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    amsgrad_debiased_max: bool = False,
) -> GradientTransformation:
    """Adam's direction (Kingma & Ba, 2014, Algorithm 1).

        m ← β₁·m + (1 − β₁)·g,    v ← β₂·v + (1 − β₂)·g²
        m̂ = m / (1 − β₁ᵗ),        v̂ = v / (1 − β₂ᵗ)
        u = m̂ / (√(v̂ + ε_root) + ε)

    ``amsgrad`` (Reddi, Kale & Kumar, 2018) keeps v_max ← max(v_max, v) and
    uses v_max in place of v, the maximum taken before bias correction as in
    torch.optim and keras. ``amsgrad_debiased_max`` takes it after, as
    optax.amsgrad: v̂_max ← max(v̂_max, v̂), so v_max holds bias-corrected values.

    ``eps_hat`` adds ε to the uncorrected √v, the paper's faster form (end of
    §2) that keras and TensorFlow use:

        u = m·√(1 − β₂ᵗ) / (1 − β₁ᵗ) / (√(v + ε_root) + ε)

    i.e. ε̂ = ε·√(1 − β₂ᵗ) in the default form, a larger ε early on.
    ``power_bias`` computes 1 − βᵗ as keras does, a float32 power of β, which
    is up to 1e-5 relative off the exact value the default computes.
    """
    check_range("b1", b1)
    check_range("b2", b2)
    check_range("eps", eps)
    check_range("eps_root", eps_root)
    if eps_hat and amsgrad_debiased_max:
        raise ValueError(
            "eps_hat adds eps to the uncorrected sqrt(v), but amsgrad_debiased_max keeps a"
            " bias-corrected maximum: choose one of them"
        )

    def init(params):
        return AdamState(*_adam_init(params, mu_dtype, nu_dtype, amsgrad))

    def update(updates, state, params=None):
        check_tree_match(updates, state.mu, "first moment")
        count = nx.increment(state.count)

        def step(mu, nu, g, nu_max=None):
            mu = nx.ema(mu, g, b1)
            g_nu = g.astype(nu.dtype)
            nu = nx.ema(nu, g_nu * g_nu, b2)
            if nu_max is None:
                second, debiased = nu, False
            elif amsgrad_debiased_max:
                nu_max = jnp.maximum(nu_max, nx.debias(nu, b2, count, power_bias))
                second, debiased = nu_max, True
            else:
                nu_max = jnp.maximum(nu_max, nu)
                second, debiased = nu_max, False
            eps_, eps_root_ = nx.as_dtype_of(second, eps, eps_root)
            if eps_hat:
                dt = second.dtype
                bias1, bias2 = (nx.bias(b, count, dt, power_bias) for b in (b1, b2))
                step_size = jnp.sqrt(bias2) / bias1
                u = mu.astype(dt) * step_size / (nx.safe_sqrt(second + eps_root_) + eps_)
            else:
                nu_hat = second if debiased else nx.debias(second, b2, count, power_bias)
                mu_hat = nx.debias(mu, b1, count, power_bias).astype(nu_hat.dtype)
                u = mu_hat / (nx.safe_sqrt(nu_hat + eps_root_) + eps_)
            return mu, nu, nu_max, u.astype(g.dtype)

        maxima = (state.nu_max,) if amsgrad else ()
        results = jax.tree.map(step, state.mu, state.nu, updates, *maxima)
        mu, nu, nu_max, out = nx.unzip(results, updates, 4)
        return out, AdamState(count, mu, nu, nu_max if amsgrad else None)

    return GradientTransformation(init, update)


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    power_bias: bool = False,
    mu_dtype=None,
    nu_dtype=None,
) -> GradientTransformation:
    """AdaMax's direction, Adam under the infinity norm (Kingma & Ba, 2014, §7.1).

        m ← β₁·m + (1 − β₁)·g,    v ← max(β₂·v, |g| + ε),    u = m / ((1 − β₁ᵗ)·v)

    The paper has no ε; it sits inside the max as in torch.optim and optax,
    keeping v > 0 when every gradient so far was zero. ``eps_in_max=False``
    puts it outside, as keras does: v ← max(β₂·v, |g|), u = m / ((1 − β₁ᵗ)·(v + ε)).
    ``power_bias`` computes 1 − β₁ᵗ as keras does (see :func:`scale_by_adam`).
    """
    check_range("b1", b1)
    check_range("b2", b2)
    check_range("eps", eps)

    def init(params):
        return AdamState(*_adam_init(params, mu_dtype, nu_dtype))

    def update(updates, state, params=None):
        check_tree_match(updates, state.mu, "first moment")
        count = nx.increment(state.count)

        def step(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            b2_, eps_ = nx.as_dtype_of(nu, nx.rate_value(b2), eps)
            magnitude = jnp.abs(g.astype(nu.dtype))
            nu = jnp.maximum(b2_ * nu, magnitude + eps_ if eps_in_max else magnitude)
            u = nx.debias(mu, b1, count, power_bias).astype(nu.dtype) / (nu if eps_in_max else nu + eps_)
            return mu, nu, u.astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(step, state.mu, state.nu, updates), updates, 3)
        return out, AdamState(count, mu, nu, None)

    return GradientTransformation(init, update)


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: Optional[float] = 4e-3,
    *,
    power_bias: bool = False,
    mu_dtype=None,
    nu_dtype=None,
) -> GradientTransformation:
    """NAdam's direction, Adam with Nesterov momentum (Dozat, 2016, Algorithm 2).

        μₜ = β₁·(1 − ½·0.96^(t·ψ))                    (ψ = ``momentum_decay``)
        m ← β₁·m + (1 − β₁)·g,    v ← β₂·v + (1 − β₂)·g²
        m̄ = μₜ₊₁·m / (1 − ∏ᵢ₌₁ᵗ⁺¹ μᵢ) + (1 − μₜ)·g / (1 − ∏ᵢ₌₁ᵗ μᵢ)
        u = m̄ / (√(v / (1 − β₂ᵗ)) + ε)

    This is the paper's warming momentum schedule, as in torch.optim and keras.
    ``momentum_decay=None`` drops it (μₜ = β₁), which is optax's ``nadam``;
    keras uses ``momentum_decay=1.0`` (0.96ᵗ) and ``power_bias`` (see :func:`scale_by_adam`).
    """
    check_range("b1", b1)
    check_range("b2", b2)
    check_range("eps", eps)
    if momentum_decay is not None:
        check_range("momentum_decay", momentum_decay)

    def schedule(step):
        b1_ = jnp.asarray(nx.rate_value(b1), _scalar_dtype())
        if momentum_decay is None:
            return b1_
        return b1_ * (1 - 0.5 * 0.96 ** (step.astype(_scalar_dtype()) * momentum_decay))

    def init(params):
        count, mu, nu, _ = _adam_init(params, mu_dtype, nu_dtype)
        return NadamState(count, jnp.ones([], _scalar_dtype()), mu, nu)

    def update(updates, state, params=None):
        check_tree_match(updates, state.mu, "first moment")
        count = nx.increment(state.count)
        mu_t, mu_next = schedule(count), schedule(count + 1)
        mu_product = state.mu_product * mu_t

        def step(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            g_nu = g.astype(nu.dtype)
            nu = nx.ema(nu, g_nu * g_nu, b2)
            dt = nu.dtype
            m_bar = (mu_next.astype(dt) * mu.astype(dt) / (1 - (mu_product * mu_next).astype(dt))
                     + (1 - mu_t.astype(dt)) * g_nu / (1 - mu_product.astype(dt)))
            u = m_bar / (nx.safe_sqrt(nx.debias(nu, b2, count, power_bias)) + jnp.asarray(eps, dt))
            return mu, nu, u.astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(step, state.mu, state.nu, updates), updates, 3)
        return out, NadamState(count, mu_product, mu, nu)

    return GradientTransformation(init, update)
