"""torch.optim's optimizers as adaptx transformations: its argument names, defaults and numbers.

``Adam(lr=1e-3)`` here is ``torch.optim.Adam(params, lr=1e-3)`` without
``params``: call ``tx.init(params)``, then ``tx.update(grads, state, params)``
(always with params: ``weight_decay`` is a settable hyperparameter even at 0).
Each function chains public adaptx blocks in the order of torch 2.13's
single-tensor code (torch/optim/<name>.py, ``_single_tensor_<name>``):

    g ← −g  (maximize)  →  g ← g + λθ  (weight_decay)  →  scaling d  →  u = −lr·d

or, with decoupled weight decay (AdamW, ``decoupled_weight_decay=True``),
scaling d → u = −lr·d → θ·(1 − lr·λ) rounded as torch rounds it.
tests/compat/test_compat_torch.py checks every preset against torch itself.

Numeric arguments are traced state keyed by torch's names, ``betas`` split
into ``beta1`` and ``beta2``: ``adaptx.set_hyperparams(state, lr=0.1)`` does
what ``param_group["lr"] = 0.1`` does, without recompiling. ``lr`` may also be
a schedule ``step -> lr`` (the part torch's LR schedulers play).

Kernel options, accepted so that torch code ports unchanged:

- ``foreach`` and ``fused`` pick torch's per-tensor, multi-tensor or fused
  kernels, which compute the same update up to rounding. XLA fuses the
  whole update by itself, so they change nothing here; the numbers follow
  the per-tensor kernels.
- ``capturable`` (step counters on the device, for CUDA graphs) and
  ``differentiable`` (autograd through the step) describe what every adaptx
  update already is: its state is device arrays under ``jax.jit``, and
  ``jax.grad`` differentiates through ``update``, including with respect to
  the hyperparameters in the state. Both values are therefore accepted.

Differences kept on purpose: decay rates (``momentum``, ``alpha``, ``rho``,
``betas``) must lie in [0, 1), which torch checks only partly; accumulators of
bfloat16/float16 params are float32 (torch keeps the param dtype).
"""
from typing import Any

import jax

from adaptx._src import numerics as nx
from adaptx._src.validate import RANGE_OF, check_range, check_tree_match, concrete
from adaptx._src.adam import scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx._src.base import GradientTransformation, chain, identity
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.moments import trace
from adaptx._src.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx._src.base import EmptyState
from adaptx._src.transforms import (
    add_decayed_weights, scale, scale_by_inverse_time_decay, scale_by_learning_rate,
)

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax", "NAdam"]

BETAS = (0.9, 0.999)
_BETAS = ("beta1", "beta2")

# torch's names for adaptx's ranges, so set_hyperparams(state, lr=...) range-checks too.
# (Not ``alpha``: RMSprop's decay shares the name with AdEMAMix's mixing weight, which may exceed 1;
# RMSprop range-checks its alpha at construction.)
RANGE_OF.update(lr="learning_rate", lr_decay="decay_rate", beta1="b1", beta2="b2",
                initial_accumulator_value="initial_accumulator")


def decay_weights_multiplicatively(weight_decay, learning_rate) -> GradientTransformation:
    """torch.optim's decoupled decay θ ← fl((1 − ηλ)·θ), as an update placed after the learning rate.

        u = g + (fl((1 − ηλ)·θ) − θ),    so that θ + u rounds as fl(fl((1 − ηλ)·θ) + g)

    (the subtraction is exact). The paper's form, ``add_decayed_weights(λ)``
    before the learning rate, drifts from torch by up to ~3e-5 relative in 200 steps.
    """
    check_range("weight_decay", weight_decay)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("weight decay needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")

        def leaf(g, p):
            p = p.astype(nx.accumulator_dtype(p))
            eta, lam = nx.cast(learning_rate, p), nx.cast(weight_decay, p)
            # δ = 1 − fl(1 − ηλ), exact; the barrier stops XLA from folding it back into ηλ.
            # θ − δθ is then fl((1 − ηλ)θ) whether or not the compiler fuses it into an FMA.
            delta = 1 - jax.lax.optimization_barrier(1 - eta * lam)
            return g + ((p - delta * p) - p).astype(g.dtype)

        return jax.tree.map(leaf, updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)


def _torch_order(maximize, weight_decay, scaling, lr, decoupled=False) -> GradientTransformation:
    """torch's step: negate (maximize), L2 into g, scaling, −lr; or, decoupled, θ·(1 − lr·λ) last."""
    if decoupled:
        blocks = [scaling, scale_by_learning_rate(lr), decay_weights_multiplicatively(weight_decay, lr)]
    else:
        blocks = [add_decayed_weights(weight_decay), scaling, scale_by_learning_rate(lr)]
    return chain(*([scale(-1.0)] if maximize else []), *blocks)


def _check(betas=None, **values) -> tuple:
    """Range-check ``values`` under torch's names; return ``betas`` as (beta1, beta2)."""
    for name, value in values.items():
        check_range(name, value, "decay" if name == "alpha" else None)  # RMSprop's alpha is its decay
    if betas is None:
        return ()
    beta1, beta2 = betas
    check_range("betas[0]", beta1, "beta1")
    check_range("betas[1]", beta2, "beta2")
    return beta1, beta2


def _check_kernel_options(foreach=None, fused=None, capturable=False, differentiable=False) -> None:
    """Reject what torch rejects; the values themselves change nothing (see the module docstring)."""
    for name, value, optional in (("foreach", foreach, True), ("fused", fused, True),
                                  ("capturable", capturable, False),
                                  ("differentiable", differentiable, False)):
        if not (isinstance(value, bool) or (optional and value is None)):
            raise TypeError(f"{name} must be True or False{' or None' if optional else ''}, got {value!r}")
    if fused and foreach:
        raise ValueError("fused and foreach cannot both be True (as in torch.optim); pass at most one")
    if fused and differentiable:
        raise ValueError("fused does not support differentiable (as in torch.optim); drop fused")


def _has_momentum(momentum: Any) -> bool:
    """torch keeps a momentum buffer only for momentum > 0; a traced momentum gets one."""
    value = concrete(momentum)
    return value is None or bool(value > 0)


def SGD(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False,
        foreach=None, differentiable=False, fused=None) -> GradientTransformation:
    """torch.optim.SGD: gradient descent with L2 weight decay and (damped or Nesterov) momentum.

        g ← g + λθ,    b₁ = g₁,    b ← μ·b + (1 − τ)·g,    θ ← θ − lr·b
        (θ ← θ − lr·(g + μ·b) with nesterov; θ ← θ − lr·g when μ = 0)

    μ = ``momentum``, τ = ``dampening``; the buffer starts at the first gradient,
    so dampening first acts on step 2 (``adaptx.trace(..., dampening=τ)``).
    """
    _check_kernel_options(foreach, fused, False, differentiable)
    _check(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    damped = concrete(dampening)
    if nesterov and (not _has_momentum(momentum) or (damped is not None and damped != 0)):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0 (as in torch.optim)")

    def build(count, lr, weight_decay, momentum=None, dampening=None):
        buffer = identity() if momentum is None else trace(momentum, nesterov, dampening=dampening, count=count)
        return _torch_order(maximize, weight_decay, buffer, lr)

    values = dict(lr=lr, weight_decay=weight_decay)
    if _has_momentum(momentum):
        values.update(momentum=momentum, dampening=dampening)
    return with_hyperparams(build, rates=("dampening",) if "dampening" in values else (), **values)


def Adagrad(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
            foreach=None, *, maximize=False, differentiable=False, fused=None) -> GradientTransformation:
    """torch.optim.Adagrad: G₀ = ``initial_accumulator_value``, ε outside the root, inverse-time decay.

        g ← g + λθ,    G ← G + g²,    θ ← θ − lr/(1 + (t − 1)·lr_decay) · g / (√G + ε)

    ``initial_accumulator_value`` only shapes the initial state, so it is a
    construction argument, not a settable hyperparameter.
    """
    _check_kernel_options(foreach, fused, False, differentiable)
    _check(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
           initial_accumulator_value=initial_accumulator_value, eps=eps)

    def build(count, lr, lr_decay, weight_decay, eps):
        scaling = chain(accumulate_squares(eps, initial_accumulator_value),
                        scale_by_inverse_time_decay(lr_decay, count=count))
        return _torch_order(maximize, weight_decay, scaling, lr)

    return with_hyperparams(build, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)


def RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
            capturable=False, foreach=None, maximize=False, differentiable=False) -> GradientTransformation:
    """torch.optim.RMSprop: decay α = 0.99, ε outside the root, momentum on the scaled gradient.

        g ← g + λθ,    v ← α·v + (1 − α)·g²,    d = g / (√v + ε)      (√(v − m²) + ε if centered)
        b ← μ·b + d,    θ ← θ − lr·b                                   (θ ← θ − lr·d when μ = 0)
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    _check(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)

    def build(count, lr, alpha, eps, weight_decay, momentum=None):
        scaling = chain(scale_by_rms(alpha, eps, eps_in_sqrt=False, centered=centered),
                        identity() if momentum is None else trace(momentum))
        return _torch_order(maximize, weight_decay, scaling, lr)

    values = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay)
    if _has_momentum(momentum):
        values["momentum"] = momentum
    return with_hyperparams(build, rates=("alpha",), **values)


def Adam(lr=1e-3, betas=BETAS, eps=1e-8, weight_decay=0, amsgrad=False, *, foreach=None,
         maximize=False, capturable=False, differentiable=False, fused=None,
         decoupled_weight_decay=False) -> GradientTransformation:
    """torch.optim.Adam: ε added to √v̂, AMSGrad's maximum taken over the raw v.

        g ← g + λθ,    m̂ = EMA_β₁(g)/(1 − β₁ᵗ),    v̂ = EMA_β₂(g²)/(1 − β₂ᵗ),    θ ← θ − lr·m̂/(√v̂ + ε)

    With ``decoupled_weight_decay`` the decay skips the moments instead:
    θ ← θ − lr·(m̂/(√v̂ + ε) + λθ), which is :func:`AdamW`.
    """
    _check_kernel_options(foreach, fused, capturable, differentiable)
    beta1, beta2 = _check(betas, lr=lr, eps=eps, weight_decay=weight_decay)

    def build(count, lr, beta1, beta2, eps, weight_decay):
        scaling = scale_by_adam(beta1, beta2, eps, amsgrad=amsgrad, count=count)
        return _torch_order(maximize, weight_decay, scaling, lr, decoupled_weight_decay)

    return with_hyperparams(build, rates=_BETAS, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


def AdamW(lr=1e-3, betas=BETAS, eps=1e-8, weight_decay=1e-2, amsgrad=False, *, maximize=False,
          foreach=None, capturable=False, differentiable=False, fused=None) -> GradientTransformation:
    """torch.optim.AdamW: :func:`Adam` with ``decoupled_weight_decay=True`` and λ = 0.01.

        θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)      (torch: θ ← θ·(1 − lr·λ), then the Adam step)
    """
    return Adam(lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                capturable=capturable, differentiable=differentiable, fused=fused,
                decoupled_weight_decay=True)


def Adadelta(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *, capturable=False,
             maximize=False, differentiable=False) -> GradientTransformation:
    """torch.optim.Adadelta: Zeiler's unit-corrected step, times a learning rate (default 1).

        g ← g + λθ,    E[g²] ← ρ·E[g²] + (1 − ρ)·g²,    Δ = √(E[Δ²] + ε)/√(E[g²] + ε)·g
        E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²,    θ ← θ − lr·Δ
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    _check(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)

    def build(count, lr, rho, eps, weight_decay):
        return _torch_order(maximize, weight_decay, scale_by_adadelta(rho, eps), lr)

    return with_hyperparams(build, rates=("rho",), lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


def Adamax(lr=2e-3, betas=BETAS, eps=1e-8, weight_decay=0, foreach=None, *, maximize=False,
           differentiable=False, capturable=False) -> GradientTransformation:
    """torch.optim.Adamax: ε inside the max.

        g ← g + λθ,    m ← EMA_β₁(g),    u ← max(β₂·u, |g| + ε),    θ ← θ − lr/(1 − β₁ᵗ)·m/u
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    beta1, beta2 = _check(betas, lr=lr, eps=eps, weight_decay=weight_decay)

    def build(count, lr, beta1, beta2, eps, weight_decay):
        return _torch_order(maximize, weight_decay, scale_by_adamax(beta1, beta2, eps, count=count), lr)

    return with_hyperparams(build, rates=_BETAS, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


def NAdam(lr=2e-3, betas=BETAS, eps=1e-8, weight_decay=0, momentum_decay=4e-3,
          decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
          differentiable=False) -> GradientTransformation:
    """torch.optim.NAdam: Dozat's warming momentum schedule μₜ = β₁·(1 − ½·0.96^(t·ψ)).

        θ ← θ − lr·(μₜ₊₁·m/(1 − ∏ᵢ₌₁ᵗ⁺¹ μᵢ) + (1 − μₜ)·g/(1 − ∏ᵢ₌₁ᵗ μᵢ)) / (√(v/(1 − β₂ᵗ)) + ε)

    with ψ = ``momentum_decay`` (see :func:`adaptx.scale_by_nadam`); weight decay
    is L2 into g, or θ·(1 − lr·λ) with ``decoupled_weight_decay`` (NAdamW).
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    beta1, beta2 = _check(betas, lr=lr, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)

    def build(count, lr, beta1, beta2, eps, weight_decay, momentum_decay):
        scaling = scale_by_nadam(beta1, beta2, eps, momentum_decay, count=count)
        return _torch_order(maximize, weight_decay, scaling, lr, decoupled_weight_decay)

    return with_hyperparams(build, rates=_BETAS, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                            weight_decay=weight_decay, momentum_decay=momentum_decay)


# ---- the adaptive family (issue 13) -------------------------------------------------------

from adaptx._src.family import scale_by_radam  # noqa: E402

__all__ += ["RAdam"]


def RAdam(lr=1e-3, betas=BETAS, eps=1e-8, weight_decay=0, decoupled_weight_decay=False, *, foreach=None,
          maximize=False, capturable=False, differentiable=False) -> GradientTransformation:
    """torch.optim.RAdam: rectified Adam with ρₜ > 5, ε added to √v before the bias correction.

        g ← g + λθ,    ρₜ > 5: θ ← θ − lr·rₜ·m̂·√(1 − β₂ᵗ)/(√v + ε),    else θ ← θ − lr·m̂

    (see :func:`adaptx.scale_by_radam`, ``eps_before_correction=True``); with
    ``decoupled_weight_decay`` the decay is θ·(1 − lr·λ) instead (RAdamW).
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    beta1, beta2 = _check(betas, lr=lr, eps=eps, weight_decay=weight_decay)

    def build(count, lr, beta1, beta2, eps, weight_decay):
        scaling = scale_by_radam(beta1, beta2, eps, 0.0, 5.0, eps_before_correction=True, count=count)
        return _torch_order(maximize, weight_decay, scaling, lr, decoupled_weight_decay)

    return with_hyperparams(build, rates=_BETAS, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


from adaptx._src.family import scale_by_rprop  # noqa: E402

__all__ += ["Rprop"]
RANGE_OF.update(etaminus="eta_minus", etaplus="eta_plus", step_size_min="min_step_size",
                step_size_max="max_step_size")


def Rprop(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, capturable=False, foreach=None, maximize=False,
          differentiable=False) -> GradientTransformation:
    """torch.optim.Rprop: Rprop without weight-backtracking, Δ₀ = lr.

        Δ ← clip(Δ·(η₊ | η₋ | 1 by the sign of g·g_prev), Δmin, Δmax),  g ← 0 where it flipped,  θ ← θ − sign(g)·Δ

    (see :func:`adaptx.scale_by_rprop`). ``etas`` are stored as ``etaminus``
    and ``etaplus``, ``step_sizes`` as ``step_size_min`` and ``step_size_max``
    (torch's names inside its step); ``lr`` seeds Δ at ``init`` only, as in
    torch, so it is not a settable hyperparameter.
    """
    _check_kernel_options(foreach, None, capturable, differentiable)
    _check(lr=lr)
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    check_range("etas[0]", etaminus, "etaminus")
    check_range("etas[1]", etaplus, "etaplus")
    check_range("step_sizes[0]", step_size_min, "step_size_min")
    check_range("step_sizes[1]", step_size_max, "step_size_max")

    def build(count, etaminus, etaplus, step_size_min, step_size_max):
        return chain(*([scale(-1.0)] if maximize else []),
                     scale_by_rprop(lr, etaminus, etaplus, step_size_min, step_size_max), scale(-1.0))

    return with_hyperparams(build, etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min,
                            step_size_max=step_size_max)


# --- Adafactor (issue 12) -------------------------------------------------------------------
from adaptx._src.factored import (  # noqa: E402
    FactoredMoments, clip_by_block_rms, factored_axes, relative_step_size, scale_by_param_block_rms,
)

__all__.append("Adafactor")
RANGE_OF.update(beta2_decay="decay_exponent", eps1="eps", eps2="eps_scale", d="clipping_threshold")


def _lerp(start, end, weight):
    """torch.lerp's rounding: start + w·(end − start) for w < ½, else end − (end − start)·(1 − w)."""
    diff = end - start
    return jax.numpy.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def torch_scale_by_factored_rms(beta2_decay, eps1, count) -> GradientTransformation:
    """torch.optim.Adafactor's factored scaling: ε₁ clamps, where the paper adds it to G².

        R ← lerp(R, mean₋₁(G²), t^β),   C ← lerp(C, mean₋₂(G²), t^β)        (leaves of rank ≥ 2)
        V̂ = R·C / max(mean₋₂(R), ε₁),   u = G / √max(V̂, ε₁²)
        v ← lerp(v, G², t^β),            u = G / √max(v, ε₁²)                 (other leaves)

    ``eps1=None`` is the machine epsilon of each param's dtype, as in torch.
    R and C are kept without torch's singleton axes.
    """
    jnp = jax.numpy

    def init(params):
        def leaf(p):
            axes = factored_axes(jnp.shape(p))
            shape, dtype = jnp.shape(p), nx.real_accumulator_dtype(p)
            # one-element placeholders (orbax cannot store zero-size arrays), each its own array:
            # a donated step cannot donate one buffer twice
            empty = lambda: jnp.zeros((1,), dtype)  # noqa: E731
            if axes is None:
                return empty(), empty(), nx.full_like_param(p, 0.0, dtype)
            return jnp.zeros(shape[:-1], dtype), jnp.zeros(shape[:-2] + shape[-1:], dtype), empty()

        return FactoredMoments(*nx.unzip(jax.tree.map(leaf, params), params, 3))

    def update(updates, state, params=None, **extra_args):
        step = nx.increment(count).astype(nx.scalar_dtype())
        weight = step ** jnp.asarray(beta2_decay, step.dtype)

        def leaf(g, v_row, v_col, v):
            dtype = v.dtype
            e1 = jnp.finfo(g.dtype).eps if eps1 is None else nx.cast(eps1, v)
            square = nx.abs_sq(g, v)
            w = nx.cast(weight, v)
            if factored_axes(g.shape) is None:
                v = _lerp(v, square, w)
                estimate = v
            else:
                v_row = _lerp(v_row, jnp.mean(square, axis=-1), w)
                v_col = _lerp(v_col, jnp.mean(square, axis=-2), w)
                estimate = v_row[..., :, None] * v_col[..., None, :]
                estimate = estimate / jnp.maximum(jnp.mean(v_row, axis=-1), e1)[..., None, None]
            u = jax.lax.rsqrt(jnp.maximum(estimate, e1 * e1)) * g.astype(dtype)
            return v_row, v_col, v, u.astype(g.dtype)

        v_row, v_col, v, out = nx.unzip(jax.tree.map(leaf, updates, *state), updates, 4)
        return out, FactoredMoments(v_row, v_col, v)

    return GradientTransformation(init, update)


def Adafactor(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *, foreach=None,
              maximize=False) -> GradientTransformation:
    """torch.optim.Adafactor (torch ≥ 2.5): Shazeer & Stern's Adafactor without momentum.

        ρₜ = min(lr, 1/√t),  αₜ = max(ε₂, RMS(θₜ₋₁))·ρₜ,  û = u / max(1, RMS(u)/d)
        θ ← θ·(1 − lr·λ) − αₜ·û                         (u: :func:`torch_scale_by_factored_rms`)

    ``eps`` is torch's pair (ε₁, ε₂); ε₁ = None is the param dtype's machine
    epsilon and is then not a hyperparameter. Numbers are state under torch's
    names, ``eps`` split into ``eps1`` and ``eps2``. Every leaf of rank ≥ 2 is
    factored over its last two axes; the decay is multiplicative and uses ``lr``, as torch's.
    """
    _check_kernel_options(foreach, None, False, False)
    eps1, eps2 = eps
    check_range("beta2_decay", beta2_decay)
    check_range("eps[1]", eps2, "eps2")
    if eps1 is not None:
        check_range("eps[0]", eps1, "eps1")
    _check(lr=lr, d=d, weight_decay=weight_decay)

    def build(count, lr, beta2_decay, eps2, d, weight_decay, eps1=None):
        return chain(
            *([scale(-1.0)] if maximize else []),
            torch_scale_by_factored_rms(beta2_decay, eps1, count),
            clip_by_block_rms(d),
            scale(relative_step_size(lr, nx.increment(count))),
            scale_by_param_block_rms(eps2),
            scale(-1.0),
            decay_weights_multiplicatively(weight_decay, lr),
        )

    values = dict(lr=lr, beta2_decay=beta2_decay, eps2=eps2, d=d, weight_decay=weight_decay)
    if eps1 is not None:
        values["eps1"] = eps1
    return with_hyperparams(build, **values)
