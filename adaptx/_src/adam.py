"""Adam and its infinity-norm and Nesterov variants, on the shared moment arithmetic."""
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import kernels, numerics as nx
from adaptx._src.base import GradientTransformation
from adaptx._src.validate import check_range, check_tree_match


# Each block's state, with a count when the block counts its steps itself and without one
# when its caller passes ``count`` (inside every adaptx optimizer).
class ScaleByAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


class AdamMoments(NamedTuple):
    mu: Any
    nu: Any


class ScaleByAdamaxState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any  # exponentially weighted infinity norm u


class AdamaxMoments(NamedTuple):  # its own type, so a checkpoint tells AdaMax from Adam
    mu: Any
    nu: Any


class ScaleByAmsgradState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any  # running maximum of ν


class AmsgradMoments(NamedTuple):
    mu: Any
    nu: Any
    nu_max: Any


class ScaleByNadamState(NamedTuple):
    count: jax.Array
    mu_product: jax.Array  # ∏ μᵢ of the momentum schedule, in the scalar dtype
    mu: Any
    nu: Any


class NadamMoments(NamedTuple):
    mu_product: jax.Array
    mu: Any
    nu: Any


def init_moments(params, mu_dtype=None, nu_dtype=None):
    """Zero first and second moments of ``params``: m in its dtype (complex stays complex), v real."""
    return nx.zeros_like_tree(params, mu_dtype), nx.zeros_like_tree(params, nu_dtype, real=True)


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _adam_step(with_eps_root, amsgrad, scalars, g, mu, nu, *maxima):
    """Adam's jnp step over lists of leaves: (direction, new mu, new nu (, new v_max)).

    ``scalars`` = (β₁, β₂, ε, ε_root, 1 − β₁ᵗ, 1 − β₂ᵗ); quantized moments are dequantized on the
    way in and requantized on the way out.
    """
    b1, b2, eps, eps_root, bias1, bias2 = scalars

    def moments(mu, nu, g, nu_max=None):
        mu = nx.ema(mu, g, b1)
        nu = nx.ema(nu, nx.abs_sq(g, nu), b2)
        second = nu if nu_max is None else jnp.maximum(nu_max, nu)
        nu_hat = second / nx.cast(bias2, second)
        if with_eps_root:
            nu_hat = nu_hat + nx.cast(eps_root, nu_hat)
        return mu, nu, second, nu_hat

    old = (mu, nu, *maxima)
    mu, nu, *maxima = nx.load(old)
    mu, nu, nu_max, nu_hat = nx.unzip(jax.tree.map(moments, mu, nu, g, *maxima), g, 4)
    out = jax.tree.map(lambda m, root, g: ((m / nx.cast(bias1, root)) / (root + nx.cast(eps, root))).astype(g.dtype),
                       mu, nx.safe_sqrt(nu_hat), g)
    return (out, *nx.store((mu, nu, *((nu_max,) if amsgrad else ())), old))


def _jnp_leaf(with_eps_root, scalars, g, mu, nu):
    return tuple(leaf for (leaf,) in _adam_step(with_eps_root, False, scalars, [g], [mu], [nu]))


def _kernel_leaf(scalars, g, mu, nu):  # ε_root = 0 adds nothing
    (beta1, comp1), (beta2, comp2), eps, eps_root, bias1, bias2 = scalars
    hyper = dict(b1=beta1, b1c=comp1, b2=beta2, b2c=comp2, eps=eps, eps_root=eps_root,
                 inv_bc1=1 / bias1.astype(jnp.float32), inv_bc2=1 / bias2.astype(jnp.float32))
    return kernels.quantized_adam_direction(hyper, g, mu, nu)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _quantized_leaf(with_eps_root, scalars, g, mu, nu):
    """One leaf whose moments are both quantized: the kernel's one pass on CPU, the jnp step elsewhere."""
    return jax.lax.platform_dependent(scalars, g, mu, nu, cpu=_kernel_leaf,
                                      default=functools.partial(_jnp_leaf, with_eps_root))


@_quantized_leaf.defjvp
def _quantized_leaf_jvp(with_eps_root, primals, tangents):
    # The kernel has no derivative; the jnp step computes the same function, so its derivative
    # serves (hypergradients, or differentiating through the gradient).
    _, tangent = jax.jvp(functools.partial(_jnp_leaf, with_eps_root), primals, tangents)
    return _quantized_leaf(with_eps_root, *primals), tangent


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    *,
    mu_dtype: Optional[Any] = None,
    nu_dtype: Optional[Any] = None,
    count: Optional[jax.Array] = None,
) -> GradientTransformation:
    """Adam's direction (Kingma & Ba, 2014, Algorithm 1).

        m ← β₁·m + (1 − β₁)·g,    v ← β₂·v + (1 − β₂)·|g|²
        m̂ = m / (1 − β₁ᵗ),        v̂ = v / (1 − β₂ᵗ)
        u = m̂ / (√(v̂ + ε_root) + ε)

    ``amsgrad`` (Reddi, Kale & Kumar, 2018) keeps v_max ← max(v_max, v) and
    uses v_max in place of v, the maximum taken before bias correction as in
    torch.optim and keras. Complex g: |g|² = g·conj(g), m complex, v real.
    ``count`` is the number of updates applied so far when the caller keeps
    it (:func:`adaptx.with_hyperparams` does); otherwise the state counts.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root)):
        check_range(name, value)
    states = (ScaleByAmsgradState, AmsgradMoments) if amsgrad else (ScaleByAdamState, AdamMoments)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        maxima = (nx.zeros_like_tree(params, nu_dtype, real=True),) if amsgrad else ()
        return nx.block_state(*states, nx.initial_count(count), mu, nu, *maxima)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, nx.quantize_module.shapes(state.mu), "first moment")
        step, own = nx.this_step(count, state)
        bias1, bias2 = nx.bias_correction(b1, step), nx.bias_correction(b2, step)

        scalars = (b1, b2, eps, eps_root, bias1, bias2)
        with_eps_root = not _is_zero(eps_root)
        plain = functools.partial(_adam_step, with_eps_root, amsgrad, scalars)

        leaves, treedef = jax.tree.flatten(updates)
        trees = [treedef.flatten_up_to(t) for t in (state.mu, state.nu, *((state.nu_max,) if amsgrad else ()))]
        native = [not amsgrad and kernels.steps_quantized_adam(*leaf) for leaf in zip(leaves, *trees)]
        rest = [i for i, fast in enumerate(native) if not fast]
        new = [[None] * len(leaves) for _ in range(1 + len(trees))]  # out, mu, nu (, nu_max)
        for tree, values in zip(new, plain([leaves[i] for i in rest], *([t[i] for i in rest] for t in trees))):
            for i, value in zip(rest, values):
                tree[i] = value
        # (β, 1 − β) split here: inside _quantized_leaf a Python β is already an array, whose
        # complement would round in float32 rather than come from double
        rates = (nx.split_rate(b1), nx.split_rate(b2), *scalars[2:])
        for i in (i for i, fast in enumerate(native) if fast):
            new[0][i], new[1][i], new[2][i] = _quantized_leaf(with_eps_root, rates, leaves[i], trees[0][i], trees[1][i])
        out, *fields = (treedef.unflatten(values) for values in new)
        return out, nx.block_state(*states, own, *fields)

    return GradientTransformation(init, update)


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, mu_dtype=None, nu_dtype=None, count=None,
) -> GradientTransformation:
    """AdaMax's direction, Adam under the infinity norm (Kingma & Ba, 2014, §7.1).

        m ← β₁·m + (1 − β₁)·g,    v ← max(β₂·v, |g| + ε),    u = m / ((1 − β₁ᵗ)·v)

    The paper has no ε; it sits inside the max as in torch.optim and optax,
    keeping v > 0 when every gradient so far was zero (keras' form, outside
    the max, is ``adaptx.compat.keras.Adamax``). ``count`` as in :func:`scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps)):
        check_range(name, value)

    def init(params):
        return nx.block_state(ScaleByAdamaxState, AdamaxMoments, nx.initial_count(count), *init_moments(params, mu_dtype, nu_dtype))

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        bias1 = nx.bias_correction(b1, step)

        def leaf(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = jnp.maximum(nx.cast(nx.rate_value(b2), nu) * nu, jnp.abs(g).astype(nu.dtype) + nx.cast(eps, nu))
            return mu, nu, (mu / (nx.cast(bias1, nu) * nu)).astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, updates), updates, 3)
        return out, nx.block_state(ScaleByAdamaxState, AdamaxMoments, own, mu, nu)

    return GradientTransformation(init, update)


def nadam_momentum(b1, momentum_decay, step) -> jax.Array:
    """Dozat's warming momentum μₜ = β₁·(1 − ½·0.96^(t·ψ)), or β₁ when ψ is None; a scalar."""
    beta = jnp.asarray(nx.rate_value(b1), nx.scalar_dtype())
    if momentum_decay is None:
        return beta
    return beta * (1 - 0.5 * 0.96 ** (step.astype(beta.dtype) * momentum_decay))


def scale_by_nadam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum_decay: Optional[float] = 4e-3,
    *, mu_dtype=None, nu_dtype=None, count=None,
) -> GradientTransformation:
    """NAdam's direction, Adam with Nesterov momentum (Dozat, 2016, Algorithm 2).

        μₜ = β₁·(1 − ½·0.96^(t·ψ))                    (ψ = ``momentum_decay``)
        m ← β₁·m + (1 − β₁)·g,    v ← β₂·v + (1 − β₂)·|g|²
        m̄ = μₜ₊₁·m / (1 − ∏ᵢ₌₁ᵗ⁺¹ μᵢ) + (1 − μₜ)·g / (1 − ∏ᵢ₌₁ᵗ μᵢ)
        u = m̄ / (√(v / (1 − β₂ᵗ)) + ε)

    This is the paper's warming momentum schedule, as in torch.optim.
    ``momentum_decay=None`` drops it (μₜ = β₁), which is optax's ``nadam``.
    Every scalar above is computed once per step. ``count`` as in :func:`scale_by_adam`.
    """
    for name, value in (("b1", b1), ("b2", b2), ("eps", eps)):
        check_range(name, value)
    if momentum_decay is not None:
        check_range("momentum_decay", momentum_decay)

    def init(params):
        mu, nu = init_moments(params, mu_dtype, nu_dtype)
        return nx.block_state(ScaleByNadamState, NadamMoments, nx.initial_count(count), jnp.ones([], nx.scalar_dtype()), mu, nu)

    @nx.stored
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step, own = nx.this_step(count, state)
        mu_t, mu_next = nadam_momentum(b1, momentum_decay, step), nadam_momentum(b1, momentum_decay, step + 1)
        mu_product = state.mu_product * mu_t
        moment_weight = mu_next / (1 - mu_product * mu_next)
        gradient_weight = (1 - mu_t) / (1 - mu_product)
        bias2 = nx.bias_correction(b2, step)

        def moments(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = nx.ema(nu, nx.abs_sq(g, nu), b2)
            m_bar = nx.cast(moment_weight, mu) * mu + nx.cast(gradient_weight, mu) * g.astype(mu.dtype)
            return mu, nu, m_bar, nu / nx.cast(bias2, nu)

        mu, nu, m_bar, nu_hat = nx.unzip(jax.tree.map(moments, state.mu, state.nu, updates), updates, 4)
        out = jax.tree.map(lambda m, root, g: (m / (root + nx.cast(eps, root))).astype(g.dtype),
                           m_bar, nx.safe_sqrt(nu_hat), updates)
        return out, nx.block_state(ScaleByNadamState, NadamMoments, own, mu_product, mu, nu)

    return GradientTransformation(init, update)
