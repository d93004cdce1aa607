"""The optimizers: chains of public blocks, with hyperparameters held in the state.

Each is pure composition: a ``chain`` of public blocks inside
:func:`adaptx.with_hyperparams`, so numeric arguments given as numbers are
state (read with :func:`adaptx.hyperparams`, set with
:func:`adaptx.set_hyperparams` or ``optax.tree_utils.tree_set``), arguments
given as jax arrays are used as given (``optax.inject_hyperparams`` works),
and any of them may be a schedule ``count -> value``.
``mu_dtype`` / ``nu_dtype`` choose the first / second-moment accumulator
dtypes (default: float32 for bfloat16 and float16 params, else the param dtype).
"""
import functools

from adaptx._src.validate import check_range
from adaptx._src.adam import scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx._src.base import GradientTransformation, chain, identity
from adaptx._src.fused import adagrad_kernel, adam_kernel, rmsprop_kernel
from adaptx._src.groups import leaf_flags, masked
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.moments import trace
from adaptx._src.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx._src.transforms import add_decayed_weights, scale_by_learning_rate


def _momentum(momentum, nesterov, mu_dtype):
    if momentum is None:
        return identity()
    check_range("momentum", momentum)  # before trace's own check, which names it ``decay``
    return trace(momentum, nesterov, mu_dtype=mu_dtype)


def _hyper(momentum, **values):
    """``values`` plus ``momentum`` unless it is concretely 0 (no buffer then)."""
    if not (isinstance(momentum, (int, float)) and momentum == 0):
        values["momentum"] = momentum
    return values


_ADAM_RATES = ("b1", "b2")


def sgd(learning_rate, momentum=0.0, nesterov=False, *, mu_dtype=None) -> GradientTransformation:
    """Stochastic gradient descent, with heavy-ball or Nesterov momentum.

        m ← β·m + g,    θ ← θ − η·m        (θ ← θ − η·(g + β·m) with ``nesterov``)

    A momentum of exactly 0 keeps no buffer. Matches torch.optim.SGD with
    ``dampening=0`` and optax.sgd.
    """
    def build(count, learning_rate, momentum=None):
        return chain(_momentum(momentum, nesterov, mu_dtype), scale_by_learning_rate(learning_rate))

    return with_hyperparams(build, **_hyper(momentum, learning_rate=learning_rate))


def adagrad(
    learning_rate, initial_accumulator=0.0, eps=1e-10, *, eps_in_sqrt=False, nu_dtype=None,
) -> GradientTransformation:
    """Adagrad (Duchi, Hazan & Singer, 2011).

        G ← G + g²,    θ ← θ − η·g / (√G + ε)       (θ ← θ − η·g / √(G + ε) with ``eps_in_sqrt``)

    Defaults as torch.optim.Adagrad (G₀ = 0, ε = 1e-10 outside the root);
    optax.adagrad and keras start at G₀ = 0.1 with ε = 1e-7 inside the root:
    ``adagrad(η, 0.1, 1e-7, eps_in_sqrt=True)``. ``initial_accumulator`` only
    shapes the initial state, so it is a construction argument, not a settable
    hyperparameter.
    """
    def build(count, learning_rate, eps):
        return chain(
            accumulate_squares(eps, initial_accumulator, eps_in_sqrt, nu_dtype=nu_dtype),
            scale_by_learning_rate(learning_rate),
        )

    # The one-pass kernel implements ε outside the root only.
    fused = None if eps_in_sqrt else adagrad_kernel
    return with_hyperparams(build, fused=fused, learning_rate=learning_rate, eps=eps)


def rmsprop(
    learning_rate, decay=0.9, eps=1e-8, eps_in_sqrt=False, centered=False, momentum=0.0,
    nesterov=False, *, mu_dtype=None, nu_dtype=None,
) -> GradientTransformation:
    """RMSProp (Hinton, lecture 6e, 2012), optionally centered and with momentum.

        v ← ρ·v + (1 − ρ)·g²,    d = g / (√v + ε),    m ← β·m + d,    θ ← θ − η·m

    ρ = 0.9 as in the lecture and optax; torch.optim.RMSprop defaults to
    ρ (``alpha``) = 0.99, keras to 0.9 with ε = 1e-7; optax puts ε inside the
    root (``eps_in_sqrt=True``). Momentum acts on the scaled gradient, as in torch.
    """
    def build(count, learning_rate, decay, eps, momentum=None):
        return chain(
            scale_by_rms(decay, eps, eps_in_sqrt, centered, nu_dtype=nu_dtype, mu_dtype=mu_dtype),
            _momentum(momentum, nesterov, mu_dtype),
            scale_by_learning_rate(learning_rate),
        )

    plain = not (centered or eps_in_sqrt) and isinstance(momentum, (int, float)) and momentum == 0
    return with_hyperparams(
        build, rates=("decay",), fused=rmsprop_kernel if plain else None,
        **_hyper(momentum, learning_rate=learning_rate, decay=decay, eps=eps),
    )


def adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False, *, mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """Adam (Kingma & Ba, 2014), or AMSGrad (Reddi et al., 2018) with ``amsgrad``.

        m̂ = EMA_β₁(g) / (1 − β₁ᵗ),    v̂ = EMA_β₂(g²) / (1 − β₂ᵗ),    θ ← θ − η·m̂ / (√v̂ + ε)

    Defaults are the paper's and torch's and optax's; keras uses ε = 1e-7
    added to the uncorrected √v.
    """
    def build(count, learning_rate, b1, b2, eps):
        return chain(
            scale_by_adam(b1, b2, eps, amsgrad=amsgrad, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(
        build, rates=_ADAM_RATES, fused=None if amsgrad else adam_kernel,
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
    )


def adamw(
    learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
    mu_dtype=None, nu_dtype=None, mask=None,
) -> GradientTransformation:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

        θ ← θ − η·(m̂ / (√v̂ + ε) + λ·θ)

    λ = 0.01 as in torch.optim.AdamW; optax.adamw defaults to 1e-4, keras to
    0.004. The decay is scaled by η, as in torch, optax and keras. ``mask``
    (a pytree of bools or a function of the params, see :func:`adaptx.masked`)
    limits the decay to some leaves, e.g. matrices but not biases and norms.
    """
    def build(count, learning_rate, b1, b2, eps, weight_decay):
        decay = add_decayed_weights(weight_decay)
        return chain(
            scale_by_adam(b1, b2, eps, amsgrad=amsgrad, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            decay if mask is None else masked(decay, mask),
            scale_by_learning_rate(learning_rate),
        )

    # The kernel decays the leaves the mask selects (one call per side), as masked() does.
    kernel = functools.partial(adam_kernel, decay_mask=None if mask is None else functools.partial(leaf_flags, mask))
    return with_hyperparams(
        build, rates=_ADAM_RATES, fused=None if amsgrad else kernel,
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
    )


def adadelta(learning_rate=1.0, rho=0.9, eps=1e-6, *, nu_dtype=None) -> GradientTransformation:
    """Adadelta (Zeiler, 2012).

        E[g²] ← ρ·E[g²] + (1 − ρ)·g²,    Δ = √(E[Δ²] + ε) / √(E[g²] + ε) · g
        E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²,    θ ← θ − η·Δ

    Defaults as torch.optim.Adadelta (η = 1, ρ = 0.9, ε = 1e-6); the paper has
    ρ = 0.95 and no η; keras uses η = 1e-3, ρ = 0.95, ε = 1e-7; optax ρ = 0.9.
    """
    def build(count, learning_rate, rho, eps):
        return chain(scale_by_adadelta(rho, eps, nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))

    return with_hyperparams(build, rates=("rho",), learning_rate=learning_rate, rho=rho, eps=eps)


def adamax(learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, *, mu_dtype=None, nu_dtype=None) -> GradientTransformation:
    """AdaMax (Kingma & Ba, 2014, §7.1).

        m ← β₁·m + (1 − β₁)·g,    v ← max(β₂·v, |g| + ε),    θ ← θ − η/(1 − β₁ᵗ) · m / v

    η = 0.002 as in the paper and torch; keras defaults to 1e-3 and adds
    ε = 1e-7 outside the max; optax has no default learning rate.
    """
    def build(count, learning_rate, b1, b2, eps):
        return chain(
            scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    return with_hyperparams(build, rates=_ADAM_RATES, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def nadam(
    learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=4e-3, *, mu_dtype=None, nu_dtype=None,
) -> GradientTransformation:
    """NAdam (Dozat, 2016): Adam with Nesterov momentum and a warming momentum schedule.

        μₜ = β₁·(1 − ½·0.96^(t·ψ)),    θ ← θ − η·(μₜ₊₁·m̂ₜ₊₁ + (1 − μₜ)·ĝₜ) / (√v̂ + ε)

    (see :func:`adaptx.scale_by_nadam`). Defaults are the paper's and torch's
    (ψ = 0.004); ``momentum_decay=None`` is optax.nadam (μₜ = β₁; no default η there).
    """
    def build(count, learning_rate, b1, b2, eps, momentum_decay=None):
        return chain(
            scale_by_nadam(b1, b2, eps, momentum_decay, mu_dtype=mu_dtype, nu_dtype=nu_dtype, count=count),
            scale_by_learning_rate(learning_rate),
        )

    values = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    if momentum_decay is not None:
        values["momentum_decay"] = momentum_decay
    return with_hyperparams(build, rates=_ADAM_RATES, **values)
