"""``keras.optimizers`` (Keras 3) as adaptx transformations, with keras' names, defaults and arithmetic.

Each function takes the arguments of the keras class of the same name, in the
same order and with the same defaults, and returns a
:class:`~adaptx.GradientTransformation` assembled from adaptx blocks. The
params it produces follow keras' (JAX backend) to float32 rounding, as
``tests/test_compat_keras.py`` checks; ``docs/keras_rows.md`` lists the conventions.

Every keras optimizer shares one base class, reproduced here as one chain::

    unscale_gradients(loss_scale_factor)                       g / s
    clip_by_norm(clipnorm) | clip_by_value(clipvalue) | clip_by_global_norm(global_clipnorm)
    the optimizer's own step, learning rate included           (below)
    add_decayed_weights(weight_decay, learning_rate=η)         − θ·λ·η, outside any momentum

Numeric arguments are traced state under their keras names (read them with
:func:`adaptx.hyperparams`, change them with :func:`adaptx.set_hyperparams`);
``learning_rate`` may be a schedule ``step -> η`` (a keras
``LearningRateSchedule`` works), read at the number of steps taken.
``use_ema`` and ``gradient_accumulation_steps`` raise ``ValueError`` naming the
tool to use instead; ``name`` labels keras variables and has no effect here.
"""
import inspect

from adaptx._src.numerics import rate_value
from adaptx._src.validate import check_range
from adaptx._src.adam import scale_by_adam, scale_by_adamax, scale_by_nadam
from adaptx._src.base import GradientTransformation, chain
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.moments import trace
from adaptx._src.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx._src.transforms import (
    add_decayed_weights, clip_by_global_norm, clip_by_norm, clip_by_value, scale_by_learning_rate,
    unscale_gradients,
)

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax", "Nadam"]

_CLIPPING = {"clipnorm": clip_by_norm, "clipvalue": clip_by_value, "global_clipnorm": clip_by_global_norm}


def _refuse_unsupported(arguments) -> None:
    if arguments["use_ema"]:
        raise ValueError(
            "use_ema=True is not supported: an adaptx transformation maps gradients to updates"
            " and holds no copy of the params. Keep the average beside the params instead: after"
            " each step, ema = params on the first step, then"
            " ema = optax.incremental_update(params, ema, 1 - ema_momentum)"
        )
    if arguments["gradient_accumulation_steps"]:
        raise ValueError(
            "gradient_accumulation_steps is not supported here: wrap the optimizer instead,"
            " adaptx.accumulate_gradients(adaptx.compat.keras.<Optimizer>(...), k), which also"
            " averages k gradients and takes one step (its learning-rate schedule counts taken"
            " steps, where keras' counts every micro-batch)"
        )


def _check_schedule(learning_rate) -> None:
    if not callable(learning_rate):
        return
    try:
        inspect.signature(learning_rate).bind(0)
    except (TypeError, ValueError):
        raise ValueError(
            "learning_rate must be a number or a schedule step -> learning rate (a keras"
            " LearningRateSchedule is one); keras' zero-argument callables are not supported:"
            " pass a number and change it between steps with adaptx.set_hyperparams"
        ) from None


def _active_clipping(arguments):
    """The one clipping argument in force, or None; keras reads 0 (like None) as no clipping."""
    given = [name for name in _CLIPPING if arguments[name] is not None]
    if len(given) > 1:
        raise ValueError(
            f"only one of clipnorm, clipvalue and global_clipnorm can be set, got {given}"
        )
    return given[0] if given and arguments[given[0]] != 0 else None


def _keras_optimizer(step, arguments, names) -> GradientTransformation:
    """Wrap ``step(**{name: value})``, an optimizer's own update, in keras' base optimizer.

    ``arguments`` are the keras arguments by name; ``names`` those that ``step``
    reads. All numeric ones in force are stored as hyperparameters.
    """
    _refuse_unsupported(arguments)
    _check_schedule(arguments["learning_rate"])
    clipping = _active_clipping(arguments)
    optional = [name for name in (clipping, "weight_decay", "loss_scale_factor") if name]
    values = {name: arguments[name] for name in (*names, *optional) if arguments[name] is not None}
    for name, value in values.items():
        check_range(name, value)

    def build(**hyper):
        blocks = []
        if "loss_scale_factor" in hyper:
            blocks.append(unscale_gradients(hyper["loss_scale_factor"]))
        if clipping:
            blocks.append(_CLIPPING[clipping](hyper[clipping]))
        blocks.append(step(**{name: hyper[name] for name in names}))
        if "weight_decay" in hyper:
            blocks.append(add_decayed_weights(hyper["weight_decay"], learning_rate=hyper["learning_rate"]))
        return chain(*blocks)

    return with_hyperparams(build, **values)


def _then_learning_rate(direction):
    """``step(learning_rate, **rest)`` = ``direction(**rest)`` scaled by −η."""
    def step(learning_rate, **rest):
        return chain(direction(**rest), scale_by_learning_rate(learning_rate))
    return step


def SGD(
    learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.SGD``: m ← β·m − η·g,  θ ← θ + m  (``nesterov``: θ ← θ + β·m − η·g).

    The buffer holds η·g, so the learning rate comes *before* the momentum,
    ``chain(scale_by_learning_rate(η), trace(β, nesterov))``, unlike
    :func:`adaptx.sgd`; the two differ once η follows a schedule. Momentum 0
    keeps no buffer. Bit-identical to keras without weight decay or global_clipnorm.
    """
    arguments = locals()
    check_range("momentum", momentum)

    def step(learning_rate, momentum=None):
        lr = scale_by_learning_rate(learning_rate)
        return lr if momentum is None else chain(lr, trace(momentum, nesterov))

    names = ("learning_rate",) if momentum == 0 else ("learning_rate", "momentum")
    return _keras_optimizer(step, arguments, names)


def Adagrad(
    learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adagrad``: G ← G + g²,  θ ← θ − η·g / √(G + ε),  G₀ = 0.1.

    ε sits inside the root and the accumulator starts at 0.1 (torch: ε outside,
    G₀ = 0). ``initial_accumulator_value`` shapes only the initial state, so it
    is not a settable hyperparameter.
    """
    arguments = locals()
    check_range("initial_accumulator_value", initial_accumulator_value)

    def direction(epsilon):
        return accumulate_squares(epsilon, initial_accumulator_value, eps_in_sqrt=True)

    return _keras_optimizer(_then_learning_rate(direction), arguments, ("learning_rate", "epsilon"))


def RMSprop(
    learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.RMSprop``: v ← ρ·v + (1 − ρ)·g²,  d = η·g / √(v + ε),  m ← β·m + d,  θ ← θ − m.

    ε inside the root (torch: outside, ρ = 0.99); ``centered`` uses v − ḡ²
    under the root. As in keras' SGD the momentum buffer holds η·d, so the
    momentum follows the learning rate; momentum 0 keeps no buffer.
    """
    arguments = locals()
    check_range("momentum", momentum)

    def step(learning_rate, rho, epsilon, momentum=None):
        scaled = chain(scale_by_rms(rho, epsilon, eps_in_sqrt=True, centered=centered),
                       scale_by_learning_rate(learning_rate))
        return scaled if momentum is None else chain(scaled, trace(momentum))

    names = ("learning_rate", "rho", "epsilon") + (("momentum",) if momentum > 0 else ())
    return _keras_optimizer(step, arguments, names)


def Adam(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adam``: θ ← θ − η·m·√(1 − β₂ᵗ)/(1 − β₁ᵗ) / (√v + ε).

    ε meets the *uncorrected* √v (``scale_by_adam(eps_hat=True)``), with
    ε = 1e-7; 1 − βᵗ is keras' float32 power of β (``power_bias=True``);
    ``amsgrad`` takes the maximum of the raw v, as torch does.
    ``weight_decay`` here is already decoupled, as in :func:`AdamW`.
    """
    arguments = locals()

    def direction(beta_1, beta_2, epsilon):
        return scale_by_adam(beta_1, beta_2, epsilon, amsgrad=amsgrad, eps_hat=True, power_bias=True)

    return _keras_optimizer(
        _then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2", "epsilon")
    )


def AdamW(
    learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.AdamW``: :func:`Adam` with a default decay λ = 0.004, θ ← θ − θ·λ·η first.

    Keras decays every optimizer this way; AdamW only refuses ``weight_decay=None``.
    """
    arguments = locals()
    if weight_decay is None:
        raise ValueError("AdamW needs a weight_decay (keras' default is 0.004); for none, use Adam")
    return Adam(**arguments)


def Adadelta(
    learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, clipnorm=None, clipvalue=None,
    global_clipnorm=None, use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
    loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adadelta``: Zeiler's update, θ ← θ − η·√(E[Δ²] + ε)/√(E[g²] + ε)·g.

    Keras' defaults are η = 0.001, ρ = 0.95, ε = 1e-7 (torch: η = 1, ρ = 0.9, ε = 1e-6).
    """
    arguments = locals()

    def direction(rho, epsilon):
        return scale_by_adadelta(rho, epsilon)

    return _keras_optimizer(_then_learning_rate(direction), arguments, ("learning_rate", "rho", "epsilon"))


def Adamax(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adamax``: u ← max(β₂·u, |g|),  θ ← θ − η·m / ((1 − β₁ᵗ)·(u + ε)).

    ε sits outside the max (``scale_by_adamax(eps_in_max=False)``); torch and optax put it inside.
    """
    arguments = locals()

    def direction(beta_1, beta_2, epsilon):
        return scale_by_adamax(beta_1, beta_2, epsilon, eps_in_max=False, power_bias=True)

    return _keras_optimizer(
        _then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2", "epsilon")
    )


def Nadam(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Nadam``: Dozat's NAdam with the momentum schedule μₜ = β₁·(1 − ½·0.96ᵗ).

    Keras raises 0.96 to t itself, ``scale_by_nadam(momentum_decay=1.0)``;
    torch and the paper use 0.96^(t·0.004), a schedule 250 times slower.
    Unlike keras' Adam, its moments use 1 − β computed in float32 from the
    float32 β (1 − 0.999 becomes 0.00099998713), so the rates enter the block
    without their double-precision complements.
    """
    arguments = locals()

    def direction(beta_1, beta_2, epsilon):
        return scale_by_nadam(rate_value(beta_1), rate_value(beta_2), epsilon, momentum_decay=1.0,
                              power_bias=True)

    return _keras_optimizer(
        _then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2", "epsilon")
    )
