"""``keras.optimizers`` (Keras 3) as adaptx transformations, with keras' names, defaults and arithmetic.

Each function takes the arguments of the keras class of the same name, in the
same order and with the same defaults, and returns a
:class:`~adaptx.GradientTransformation` assembled from adaptx blocks. The
params it produces follow keras' (JAX backend) to float32 rounding, as
``tests/compat/test_compat_keras.py`` checks; ``docs/keras_parity.md`` lists the conventions.

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
import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.adam import AdamaxMoments, AdamMoments, AmsgradMoments, NadamMoments, nadam_momentum
from adaptx._src.base import EmptyState, GradientTransformation, chain
from adaptx._src.hyperparams import with_hyperparams
from adaptx._src.moments import trace
from adaptx._src.scaling import accumulate_squares, scale_by_adadelta, scale_by_rms
from adaptx._src.transforms import (
    clip_by_global_norm, clip_by_norm, clip_by_value, scale_by_learning_rate, unscale_gradients,
)
from adaptx._src.validate import RANGE_OF, check_range, check_tree_match, concrete

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax", "Nadam"]

# keras' names for adaptx's ranges, so set_hyperparams(state, beta_1=...) range-checks too.
RANGE_OF.update(beta_1="b1", beta_2="b2", epsilon="eps", initial_accumulator_value="initial_accumulator",
                clipnorm="max_norm", global_clipnorm="max_norm", clipvalue="max_value",
                loss_scale_factor="loss_scale")
_BETAS = ("beta_1", "beta_2")


# keras' own arithmetic, built on adaptx's shared numerics. Where keras departs from the
# papers (ε on the uncorrected √v, ε outside AdaMax's max, 1 − βᵗ as a float32 power, decay
# rounded as two assignments), the departure lives here and not in adaptx's blocks.

def _power_bias(decay, step):
    """keras' 1 − βᵗ: a float32 power of the float32 β (up to 1e-5 relative off the exact value)."""
    dtype = nx.scalar_dtype()
    return 1 - jnp.power(jnp.asarray(nx.rate_value(decay), dtype), step.astype(dtype))


def _moments(params, extra=0):
    nus = [nx.zeros_like_tree(params, real=True) for _ in range(1 + extra)]
    return (nx.zeros_like_tree(params), *nus)


def keras_scale_by_adam(b1, b2, eps, amsgrad, count) -> GradientTransformation:
    """keras.optimizers.Adam's direction: u = m·√(1 − β₂ᵗ)/(1 − β₁ᵗ) / (√v + ε).

    ε meets the uncorrected √v (the paper's faster form, end of its §2), 1 − βᵗ
    is keras' float32 power, and AMSGrad's maximum is over the raw v.
    """
    State = AmsgradMoments if amsgrad else AdamMoments

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step = nx.increment(count)
        step_size = jnp.sqrt(_power_bias(b2, step)) / _power_bias(b1, step)

        def leaf(mu, nu, g, nu_max=None):
            mu = nx.ema(mu, g, b1)
            nu = nx.ema(nu, nx.abs_sq(g, nu), b2)
            second = nu if nu_max is None else jnp.maximum(nu_max, nu)
            u = mu * nx.cast(step_size, second) / (nx.safe_sqrt(second) + nx.cast(eps, second))
            return mu, nu, second, u.astype(g.dtype)

        maxima = (state.nu_max,) if amsgrad else ()
        mu, nu, nu_max, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, updates, *maxima), updates, 4)
        return out, State(mu, nu, *((nu_max,) if amsgrad else ()))

    return GradientTransformation(lambda params: State(*_moments(params, int(amsgrad))), update)


def keras_scale_by_adamax(b1, b2, eps, count) -> GradientTransformation:
    """keras.optimizers.Adamax's direction: v ← max(β₂·v, |g|), u = m / ((1 − β₁ᵗ)·(v + ε)), ε outside the max."""
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        bias1 = _power_bias(b1, nx.increment(count))

        def leaf(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = jnp.maximum(nx.cast(nx.rate_value(b2), nu) * nu, jnp.abs(g).astype(nu.dtype))
            return mu, nu, ((mu / nx.cast(bias1, nu)) / (nu + nx.cast(eps, nu))).astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, updates), updates, 3)
        return out, AdamaxMoments(mu, nu)

    return GradientTransformation(lambda params: AdamaxMoments(*_moments(params)), update)


def keras_scale_by_nadam(b1, b2, eps, count) -> GradientTransformation:
    """keras.optimizers.Nadam's direction: Dozat's NAdam with μₜ = β₁·(1 − ½·0.96ᵗ).

    keras raises 0.96 to t itself (torch and the paper: 0.96^(t·0.004)), takes
    1 − β₂ᵗ as a float32 power, and its moments use 1 − β computed in float32
    from the float32 β (1 − 0.999 becomes 0.00099998713).
    """
    b1, b2 = nx.rate_value(b1), nx.rate_value(b2)

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step = nx.increment(count)
        mu_t, mu_next = nadam_momentum(b1, 1.0, step), nadam_momentum(b1, 1.0, step + 1)
        mu_product = state.mu_product * mu_t
        bias2 = _power_bias(b2, step)

        def leaf(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = nx.ema(nu, nx.abs_sq(g, nu), b2)
            dt, g_nu = nu.dtype, g.astype(nu.dtype)
            m_bar = (mu_next.astype(dt) * mu.astype(dt) / (1 - (mu_product * mu_next).astype(dt))
                     + (1 - mu_t.astype(dt)) * g_nu / (1 - mu_product.astype(dt)))
            return mu, nu, (m_bar / (nx.safe_sqrt(nu / bias2.astype(dt)) + nx.cast(eps, nu))).astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, updates), updates, 3)
        return out, NadamMoments(mu_product, mu, nu)

    return GradientTransformation(
        lambda params: NadamMoments(jnp.ones([], nx.scalar_dtype()), *_moments(params)), update)


def keras_decay(weight_decay, learning_rate) -> GradientTransformation:
    """keras' weight decay θ ← θ − θ·λ·η, as an update placed after the learning rate.

    keras' base optimizer shrinks θ beside updates whose momentum buffers
    already hold η, which no placement before the learning rate reproduces
    once η follows a schedule. Rounded as keras' two assignments are,
    u = ((θ − θ·λ·η) + g) − θ: θ + u lands on keras' θ exactly whenever the
    new θ is within a factor 2 of the old (Sterbenz's lemma).
    """
    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("weight_decay needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")

        def leaf(g, p):
            p = p.astype(g.dtype)
            decayed = p - p * nx.cast(weight_decay, g) * nx.cast(learning_rate, g)
            return (decayed + g) - p

        return jax.tree.map(leaf, updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)

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


def _has_momentum(momentum) -> bool:
    """keras keeps a momentum buffer only for momentum > 0; a traced momentum gets one."""
    value = concrete(momentum)
    return value is None or bool(value > 0)


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

    def build(count, **hyper):
        blocks = []
        if "loss_scale_factor" in hyper:
            blocks.append(unscale_gradients(hyper["loss_scale_factor"]))
        if clipping:
            blocks.append(_CLIPPING[clipping](hyper[clipping]))
        blocks.append(step(count, **{name: hyper[name] for name in names}))
        if "weight_decay" in hyper:
            blocks.append(keras_decay(hyper["weight_decay"], hyper["learning_rate"]))
        return chain(*blocks)

    return with_hyperparams(build, rates=tuple(name for name in _BETAS + ("rho",) if name in values), **values)


def _then_learning_rate(direction):
    """``step(learning_rate, **rest)`` = ``direction(**rest)`` scaled by −η."""
    def step(count, learning_rate, **rest):
        return chain(direction(count, **rest), scale_by_learning_rate(learning_rate))
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

    def step(count, learning_rate, momentum=None):
        lr = scale_by_learning_rate(learning_rate)
        return lr if momentum is None else chain(lr, trace(momentum, nesterov))

    names = ("learning_rate",) + (("momentum",) if _has_momentum(momentum) else ())
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

    def direction(count, epsilon):
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

    def step(count, learning_rate, rho, epsilon, momentum=None):
        scaled = chain(scale_by_rms(rho, epsilon, eps_in_sqrt=True, centered=centered),
                       scale_by_learning_rate(learning_rate))
        return scaled if momentum is None else chain(scaled, trace(momentum))

    names = ("learning_rate", "rho", "epsilon") + (("momentum",) if _has_momentum(momentum) else ())
    return _keras_optimizer(step, arguments, names)


def Adam(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None,
    clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adam``: θ ← θ − η·m·√(1 − β₂ᵗ)/(1 − β₁ᵗ) / (√v + ε).

    ε meets the *uncorrected* √v, with ε = 1e-7; 1 − βᵗ is keras' float32
    power of β (:func:`keras_scale_by_adam`); ``amsgrad`` takes the maximum of
    the raw v, as torch does.
    ``weight_decay`` here is already decoupled, as in :func:`AdamW`.
    """
    arguments = locals()

    def direction(count, beta_1, beta_2, epsilon):
        return keras_scale_by_adam(beta_1, beta_2, epsilon, amsgrad, count)

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

    def direction(count, rho, epsilon):
        return scale_by_adadelta(rho, epsilon)

    return _keras_optimizer(_then_learning_rate(direction), arguments, ("learning_rate", "rho", "epsilon"))


def Adamax(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adamax``: u ← max(β₂·u, |g|),  θ ← θ − η·m / ((1 − β₁ᵗ)·(u + ε)).

    ε sits outside the max (:func:`keras_scale_by_adamax`); torch and optax put it inside.
    """
    arguments = locals()

    def direction(count, beta_1, beta_2, epsilon):
        return keras_scale_by_adamax(beta_1, beta_2, epsilon, count)

    return _keras_optimizer(
        _then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2", "epsilon")
    )


def Nadam(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Nadam``: Dozat's NAdam with the momentum schedule μₜ = β₁·(1 − ½·0.96ᵗ).

    Keras raises 0.96 to t itself; torch and the paper use 0.96^(t·0.004), a
    schedule 250 times slower (:func:`keras_scale_by_nadam`).
    """
    arguments = locals()

    def direction(count, beta_1, beta_2, epsilon):
        return keras_scale_by_nadam(beta_1, beta_2, epsilon, count)

    return _keras_optimizer(
        _then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2", "epsilon")
    )


# ---- the adaptive family (issue 13) -------------------------------------------------------

from adaptx._src.family import scale_by_lion  # noqa: E402

__all__ += ["Lion"]


def Lion(
    learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Lion``: θ ← θ − η·sign(β₁·m + (1 − β₁)·g),  m ← β₂·m + (1 − β₂)·g.

    :func:`adaptx.scale_by_lion` with keras' 1 − β taken in float32 from the
    float32 β; decay as keras' base optimizer. keras accepts β₁ = 1, adaptx
    asks β₁ < 1 as for every decay rate.
    """
    arguments = locals()

    def direction(count, beta_1, beta_2):
        return scale_by_lion(nx.rate_value(beta_1), nx.rate_value(beta_2))

    return _keras_optimizer(_then_learning_rate(direction), arguments, ("learning_rate", "beta_1", "beta_2"))


# --- Adafactor (issue 12) -------------------------------------------------------------------
from adaptx._src.factored import clip_by_block_rms, relative_step_size, scale_by_factored_rms, scale_by_param_block_rms  # noqa: E402
from adaptx._src.transforms import scale  # noqa: E402

__all__.append("Adafactor")
RANGE_OF.update(beta_2_decay="decay_exponent", epsilon_1="eps", epsilon_2="eps_scale",
                clip_threshold="clipping_threshold")


def Adafactor(
    learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3, clip_threshold=1.0,
    relative_step=True, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
    use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
    gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Adafactor``: θ ← θ − max(ε₂, RMS(θ))·min(η, 1/√t)·clip(G/√V̂).

    V̂ is the paper's (ε₁ added to G², the last two axes of every leaf of rank
    ≥ 2 factored: :func:`adaptx.scale_by_factored_rms`). keras applies
    min(η, 1/√t) whatever ``relative_step`` says (it only repeats that min for
    a constant η), so ``relative_step`` changes nothing here either. Unlike
    keras, the full V̂ of a factored leaf is not kept in the state. keras
    decays the weights before reading RMS(θ); here the decay follows the step
    (as in every keras preset), so with ``weight_decay`` the two differ by λη relative in αₜ.
    """
    arguments = locals()

    def step(count, learning_rate, beta_2_decay, epsilon_1, epsilon_2, clip_threshold):
        return chain(
            scale_by_factored_rms(-beta_2_decay, epsilon_1, count=count),
            clip_by_block_rms(clip_threshold),
            scale(relative_step_size(learning_rate, nx.increment(count))),
            scale_by_param_block_rms(epsilon_2),
            scale(-1.0),
        )

    return _keras_optimizer(step, arguments, ("learning_rate", "beta_2_decay", "epsilon_1", "epsilon_2",
                                              "clip_threshold"))


# --- Lamb (issue 13) ------------------------------------------------------------------------
from adaptx._src.family import scale_by_trust_ratio  # noqa: E402

__all__.append("Lamb")


def keras_scale_by_lamb(b1, b2, eps, count) -> GradientTransformation:
    """keras.optimizers.Lamb's direction before the trust ratio: r = m̂ / (√(v / (1 − β₂ᵗ)) + ε).

    Unlike keras' Adam, ε meets the corrected √v̂; 1 − βᵗ is keras' float32
    power, the moments m += (g − m)·(1 − β) with 1 − β in double.
    """
    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "first moment")
        step = nx.increment(count)
        bias1, bias2 = _power_bias(b1, step), _power_bias(b2, step)

        def leaf(mu, nu, g):
            mu = nx.ema(mu, g, b1)
            nu = nx.ema(nu, nx.abs_sq(g, nu), b2)
            root = nx.safe_sqrt(nu / nx.cast(bias2, nu)) + nx.cast(eps, nu)
            return mu, nu, ((mu / nx.cast(bias1, mu)) / root).astype(g.dtype)

        mu, nu, out = nx.unzip(jax.tree.map(leaf, state.mu, state.nu, updates), updates, 3)
        return out, AdamMoments(mu, nu)

    return GradientTransformation(lambda params: AdamMoments(*_moments(params)), update)


def keras_trust_ratio(weight_decay, learning_rate) -> GradientTransformation:
    """:func:`adaptx.scale_by_trust_ratio` reading ‖θ‖ where keras does: after its base optimizer
    decayed θ ← θ − θ·λ·η, which keras runs before ``update_step`` (no decay: θ itself)."""
    ratio = scale_by_trust_ratio()
    if weight_decay is None:
        return ratio

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("Lamb needs params: call update(grads, state, params)")
        decayed = jax.tree.map(lambda p: p - p * nx.cast(weight_decay, p) * nx.cast(learning_rate, p), params)
        return ratio.update(updates, state, decayed)

    return GradientTransformation(ratio.init, update)


def Lamb(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None,
    clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
    ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
) -> GradientTransformation:
    """``keras.optimizers.Lamb``: θ ← θ − η·(‖θ‖/‖r‖)·r,  r = m̂ / (√v̂ + ε)  (norms per variable).

    :func:`keras_scale_by_lamb`, then :func:`adaptx.scale_by_trust_ratio` (ratio 1 where either
    norm is 0, as keras). keras' λ is its base optimizer's decay, outside the ratio (the
    paper and :func:`adaptx.lamb` put λθ inside r). keras decays θ before ``update_step``
    reads ‖θ‖, so the ratio reads the decayed θ − θ·λ·η (:func:`keras_trust_ratio`); the
    decay itself is applied after the step, as in every preset.
    """
    arguments = locals()

    def step(count, learning_rate, beta_1, beta_2, epsilon, weight_decay=None):
        return chain(keras_scale_by_lamb(beta_1, beta_2, epsilon, count),
                     keras_trust_ratio(weight_decay, learning_rate), scale_by_learning_rate(learning_rate))

    names = ("learning_rate", "beta_1", "beta_2", "epsilon") + (("weight_decay",) if weight_decay is not None else ())
    return _keras_optimizer(step, arguments, names)
