"""The adaptive family's optimizers: chains of public blocks with hyperparameters held in the state.

Pure composition, as in ``aliases``: argument names and defaults follow
optax's function of the same name (the learning rate is required there, and
here), except where a docstring says otherwise.
"""
import jax.numpy as jnp

from adaptx._src.adam import scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx._src.base import GradientTransformation, chain
from adaptx._src.family import (
    scale_by_ademamix, scale_by_adan, scale_by_adopt, scale_by_belief, scale_by_corrected_rms, scale_by_lion, scale_by_novograd,
    scale_by_prodigy, scale_by_radam, scale_by_rprop,
    scale_by_trust_ratio, scale_by_yogi,
)
from adaptx._src.groups import masked
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.schedule_free import schedule_free
from adaptx._src.transforms import add_decayed_weights, scale, scale_by_learning_rate

_ADAM_RATES = ("b1", "b2")


def _decay(weight_decay, mask):
    decay = add_decayed_weights(weight_decay)
    return decay if mask is None else masked(decay, mask)


def radam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, *, nesterov=False,
          mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """RAdam (Liu et al., 2020): Adam with its variance rectified, momentum SGD while ρₜ ≤ 5.

        θ ← θ − η·rₜ·m̂ / (√v̂ + ε)   if ρₜ > ``threshold``,   else θ ← θ − η·m̂

    (see :func:`adaptx.scale_by_radam`). optax.radam's arguments and defaults;
    torch.optim.RAdam adds ε before the bias correction:
    ``adaptx.compat.torch.RAdam``.
    """
    def build(count, learning_rate, b1, b2, eps, eps_root, threshold):
        return chain(
            scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov, mu_dtype=mu_dtype,
                           nu_dtype=nu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            eps_root=eps_root, threshold=threshold)


def adabelief(learning_rate, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, *, nesterov=False,
              mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020): Adam with the variance of g around its EMA.

        s ← β₂·s + (1 − β₂)·(g − m)² + ε_root,    θ ← θ − η·m̂ / (√ŝ + ε)

    (see :func:`adaptx.scale_by_belief`); optax.adabelief's defaults (ε = ε_root = 1e-16, the paper's ε).
    """
    def build(count, learning_rate, b1, b2, eps, eps_root):
        return chain(
            scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
                            count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            eps_root=eps_root)


def yogi(learning_rate, b1=0.9, b2=0.999, eps=1e-3, *, initial_accumulator_value=1e-6, bias_correction=True,
         mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """Yogi (Zaheer et al., 2018): Adam whose v moves additively, by at most (1 − β₂)·g² a step.

        v ← v − (1 − β₂)·sign(v − g²)·g²,    θ ← θ − η·m̂ / (√v̂ + ε)

    (see :func:`adaptx.scale_by_yogi`); optax.yogi's defaults (ε = 1e-3 and
    m₀ = v₀ = 1e-6 as the paper's experiments). ``bias_correction=False`` is
    the paper's algorithm box. ``initial_accumulator_value`` only shapes the
    initial state, so it is a construction argument.
    """
    def build(count, learning_rate, b1, b2, eps):
        return chain(
            scale_by_yogi(b1, b2, eps, 0.0, initial_accumulator_value, bias_correction=bias_correction,
                          mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def lion(learning_rate, b1=0.9, b2=0.99, mu_dtype=None, weight_decay=1e-3, mask=None) -> GradientTransformation:
    """Lion (Chen et al., 2023, Algorithm 2): the sign of an interpolated momentum.

        θ ← θ − η·(sign(β₁·m + (1 − β₁)·g) + λ·θ),    m ← β₂·m + (1 − β₂)·g

    optax.lion's arguments and defaults (λ = 1e-3); keras' Lion is
    ``adaptx.compat.keras.Lion``. ``mask`` limits the decay as in :func:`adaptx.adamw`.
    """
    def build(count, learning_rate, b1, b2, weight_decay):
        return chain(scale_by_lion(b1, b2, mu_dtype=mu_dtype), _decay(weight_decay, mask),
                     scale_by_learning_rate(learning_rate))

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2,
                            weight_decay=weight_decay)


def lamb(learning_rate, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, weight_decay=0.0, mask=None, *,
         mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """LAMB (You et al., 2020, Algorithm 2): Adam's step plus decay, rescaled per leaf by a trust ratio.

        r = m̂ / (√(v̂ + ε_root) + ε) + λ·θ,    θ ← θ − η·(‖θ‖ / ‖r‖)·r     (norms per leaf)

    optax.lamb's arguments and defaults. ``mask`` limits the decay as in :func:`adaptx.adamw`.
    """
    def build(count, learning_rate, b1, b2, eps, eps_root, weight_decay):
        return chain(
            scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            _decay(weight_decay, mask),
            scale_by_trust_ratio(),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            eps_root=eps_root, weight_decay=weight_decay)


def nadamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, mask=None, momentum_decay=4e-3, *,
           mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """NAdamW: :func:`adaptx.nadam` with decoupled weight decay (Loshchilov & Hutter, 2019).

        θ ← θ − η·(NAdam's direction + λ·θ)

    ψ = ``momentum_decay`` as :func:`adaptx.nadam` (torch's warming schedule,
    ``compat.torch.NAdam(decoupled_weight_decay=True)``); ``momentum_decay=None``
    is optax.nadamw (μₜ = β₁). λ = 1e-4 as optax.
    """
    def build(count, learning_rate, b1, b2, eps, weight_decay, momentum_decay=None):
        return chain(
            scale_by_nadam(b1, b2, eps, momentum_decay, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            _decay(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )

    values = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if momentum_decay is not None:
        values["momentum_decay"] = momentum_decay
    return with_hyperparams(build, rates=_ADAM_RATES, **values)


def adamaxw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, mask=None, *,
            mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """AdaMaxW: :func:`adaptx.adamax` with decoupled weight decay; optax.adamaxw's defaults.

        θ ← θ − η·(m / ((1 − β₁ᵗ)·u) + λ·θ),    u ← max(β₂·u, |g| + ε)
    """
    def build(count, learning_rate, b1, b2, eps, weight_decay):
        return chain(
            scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            _decay(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            weight_decay=weight_decay)


def rprop(learning_rate, eta_minus=0.5, eta_plus=1.2, min_step_size=1e-6, max_step_size=50.0) -> GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993), without weight-backtracking, as torch.optim.Rprop.

        Δ ← clip(Δ·η±, Δ_min, Δ_max) by the sign of g·g_prev,    θ ← θ − sign(g)·Δ  (no step where it flipped)

    (see :func:`adaptx.scale_by_rprop`); optax.rprop's arguments and defaults.
    ``learning_rate`` is the initial step Δ₀, read at ``init`` only, so it is a
    construction argument, not a settable hyperparameter. optax.rprop applies
    each step one update late (its first update is 0); adaptx and torch do not.
    """
    def build(count, eta_minus, eta_plus, min_step_size, max_step_size):
        return chain(scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size), scale(-1.0))

    return with_hyperparams(build, eta_minus=eta_minus, eta_plus=eta_plus, min_step_size=min_step_size,
                            max_step_size=max_step_size)


def novograd(learning_rate, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0, *,
             mu_dtype=None) -> GradientTransformation:
    """NovoGrad (Ginsburg et al., 2019): layer-wise second moments, decay inside the momentum.

        v ← β₂·v + (1 − β₂)·‖g‖²  (per leaf),    m ← β₁·m + g/(√v + ε) + λ·θ,    θ ← θ − η·m

    (see :func:`adaptx.scale_by_novograd`); optax.novograd's arguments and defaults.
    """
    def build(count, learning_rate, b1, b2, eps, eps_root, weight_decay):
        return chain(
            scale_by_novograd(b1, b2, eps, eps_root, weight_decay, mu_dtype=mu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            eps_root=eps_root, weight_decay=weight_decay)


def adan(learning_rate, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.0, mask=None, *,
         diff_weight=None) -> GradientTransformation:
    """Adan (Xie et al., 2022): Nesterov momentum estimated from gradient differences.

        θ ← θ − η·((m̂ + β₂·v̂) / (√n̂ + ε) + λ·θ)

    (see :func:`adaptx.scale_by_adan`). optax.adan's arguments and defaults,
    but the difference is weighed by β₂ as in the paper and its code, where
    optax weighs it by 1 − β₂ (``diff_weight=1 - b2`` gives optax's numbers).
    The decay is decoupled and additive as in optax; the paper's proximal step
    θ/(1 + ηλ) agrees to first order in ηλ.
    """
    def build(count, learning_rate, b1, b2, b3, eps, eps_root, weight_decay):
        return chain(
            scale_by_adan(b1, b2, b3, eps, eps_root, diff_weight=diff_weight, count=count),
            _decay(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=("b1", "b2", "b3"), learning_rate=learning_rate, b1=b1, b2=b2, b3=b3,
                            eps=eps, eps_root=eps_root, weight_decay=weight_decay)


def adopt(learning_rate, b1=0.9, b2=0.9999, eps=1e-6, mu_dtype=None, *, nesterov=False, use_clipping=True,
          clip_value_fn=None, nu_dtype=None) -> GradientTransformation:
    """ADOPT (Taniguchi et al., 2024): the gradient normalised by the previous second moment, then averaged.

        m ← β₁·m + (1 − β₁)·clip(g / max(√v_prev, ε), k^¼),    θ ← θ − η·m    (no step on the first update)

    (see :func:`adaptx.scale_by_adopt`); optax.contrib.adopt's arguments and
    defaults (``clip_value_fn=None`` is its k ↦ k^¼).
    """
    clip = {} if clip_value_fn is None else {"clip_value_fn": clip_value_fn}

    def build(count, learning_rate, b1, b2, eps):
        return chain(
            scale_by_adopt(b1, b2, eps, nesterov=nesterov, use_clipping=use_clipping, mu_dtype=mu_dtype,
                           nu_dtype=nu_dtype, count=count, **clip),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def ademamix(learning_rate, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, eps_root=0.0, mu_dtype=None,
             weight_decay=0.0, mask=None, *, nu_dtype=None) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al., 2024): Adam plus α times a slow, uncorrected EMA of g.

        θ ← θ − η·((m̂₁ + α·m₂) / (√v̂ + ε) + λ·θ)

    (see :func:`adaptx.scale_by_ademamix`); optax.contrib.ademamix's arguments
    and defaults. ``alpha`` and ``b3`` may be schedules ``count -> value`` (the
    paper's warm-ups), like the learning rate.
    """
    def build(count, learning_rate, b1, b2, b3, alpha, eps, eps_root, weight_decay):
        return chain(
            scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            _decay(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=("b1", "b2", "b3"), learning_rate=learning_rate, b1=b1, b2=b2, b3=b3,
                            alpha=alpha, eps=eps, eps_root=eps_root, weight_decay=weight_decay)


def schedule_free_adamw(learning_rate=2.5e-3, warmup_steps=None, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                        weight_lr_power=2.0, *, state_dtype=None, nu_dtype=None) -> GradientTransformation:
    """Schedule-free AdamW (Defazio et al., 2024, Algorithm 1): no momentum buffer, no decay schedule.

        ηₜ = η·min(1, t/T_warmup),   z ← z − ηₜ·(g/(√v̂ + ε) + λ·y),   x ← (1 − c)·x + c·z,   y = β₁x + (1 − β₁)z

    with g taken at the params y and c = (max ηᵢ)^p / Σ (max ηᵢ)^p (see
    :func:`adaptx.schedule_free`); evaluate at :func:`adaptx.schedule_free_eval_params`.
    optax.contrib.schedule_free_adamw's arguments and defaults. The paper folds
    √(1 − β₂ᵗ) into ηₜ (ε then meets the uncorrected √v, and the weights c see
    the corrected ηₜ); optax and this divide v by 1 − β₂ᵗ and weigh by the
    warmed-up η. ``warmup_steps`` only shapes the schedule: a construction argument.
    """
    def build(count, learning_rate, b1, b2, eps, weight_decay, weight_lr_power):
        lr = learning_rate
        if warmup_steps:
            lr = learning_rate * jnp.minimum(1.0, (count + 1) / warmup_steps)
        base = chain(scale_by_corrected_rms(b2, eps, nu_dtype=nu_dtype, count=count),
                     add_decayed_weights(weight_decay), scale_by_learning_rate(lr))
        return schedule_free(base, lr, b1, weight_lr_power, state_dtype=state_dtype)

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                            weight_decay=weight_decay, weight_lr_power=weight_lr_power)


def prodigy(learning_rate=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, estim_lr0=1e-6, estim_lr_coef=1.0,
            weight_decay=0.0, safeguard_warmup=False, weight_decay_mask=None, *, bias_correction=True,
            mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """Prodigy (Mishchenko & Defazio, 2024): Adam whose step size d is estimated as it goes.

        d' = max(d, r/‖s‖₁),    θ ← θ − γ·d·c·(m / (√v + d'·ε) + λ·θ)

    with m, v the moments of d·g and r, s the β₃-weighted sums of γd²c·⟨g, x₀ − x⟩
    and γd²c·g (see :func:`adaptx.scale_by_prodigy`). optax.contrib.prodigy's
    arguments and defaults: γ = ``learning_rate`` is a multiplier (or schedule)
    on d, d₀ = ``estim_lr0``. The state names the betas ``b1``, ``b2`` and,
    when given, ``b3`` (``beta3=None`` is √β₂, following a changed ``b2``);
    ``estim_lr0`` fills the initial d, so it is a construction argument.
    ``bias_correction=False`` is the paper's box (and the authors' default):
    optax always multiplies by c = √(1 − β₂ᵗ)/(1 − β₁ᵗ). ``weight_decay_mask`` as
    optax's (its current source; 0.2.8 has none).
    """
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (b1, b2), got {betas!r}")
    b1, b2 = betas

    def build(count, learning_rate, b1, b2, eps, estim_lr_coef, weight_decay, b3=None):
        return chain(
            scale_by_prodigy(learning_rate, b1, b2, b3, eps, estim_lr0, estim_lr_coef, weight_decay,
                             safeguard_warmup=safeguard_warmup, bias_correction=bias_correction,
                             weight_decay_mask=weight_decay_mask, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
                             count=count),
            scale_by_learning_rate(learning_rate),
        )

    values = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, estim_lr_coef=estim_lr_coef,
                  weight_decay=weight_decay)
    if beta3 is not None:
        values["b3"] = beta3
    return with_hyperparams(build, rates=_ADAM_RATES, **values)
