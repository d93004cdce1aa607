"""adaptx.compat.keras against real Keras 3 on its JAX backend.

Both sides take 200 float32 steps from the same params with the same
precomputed gradients (magnitudes 1e-6 to 1e3) and hyperparameters drawn at
random within their valid ranges. The deviation of a leaf is
max|adaptx − keras| / max|keras| over that leaf (for params, the larger of
that maximum at the start and at the end), so a coordinate that ends near
zero is judged against the scale it was rounded at, not against its own
cancellation.

The bound is ``harness.rounding_bound`` for two float32 programs over 200
steps of the preset (STEP_COST) and of the base optimizer's options it uses
(EXTRA_COST). Both are compared with each other, not with a float64 oracle:
keras' conventions include float32 roundings (β and βᵗ in float32 in the bias
corrections) that a float64 run would not reproduce, and whose ill-conditioned
part, 1 − βᵗ, is the same XLA operation on the same float32 numbers on both
sides, so it does not enter their difference. Measured worst, x86-64 with XLA
at AVX-512, AVX2 and SSE4.2: 1.3e-6 on state and 2.6e-7 on params, against
bounds of 2.1e-4 (SGD) to 1.6e-3 (Adam with clipnorm).
Where both sides are the same operations in the same order (SGD without decay)
they are compared bit for bit: one compiled program holds both, so whatever
contraction, vector width or reduction order XLA picks on a machine, it picks
for both.
"""
import inspect
import os
import zlib

os.environ["KERAS_BACKEND"] = "jax"  # keras reads it once, at its first import

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

import adaptx
from harness import rounding_bound, step_cost
from adaptx._src.adam import AdamaxMoments, AdamMoments, AmsgradMoments, NadamMoments
from adaptx.compat import keras as kx
from adaptx._src.moments import MomentState
from adaptx._src.scaling import AccumulatorState, AdadeltaState, RmsState
from adaptx._src.family import ScaleByLionState

if keras.backend.backend() != "jax":
    raise RuntimeError(
        f"keras was imported with the {keras.backend.backend()} backend before this module"
        " could choose jax: run the tests with KERAS_BACKEND=jax in the environment"
    )

STEPS = 200
# Rounded operations and transcendentals per step that the base optimizer's options add to
# the preset's chain (harness.STEP_COST): a norm over the ≤ 13 elements of a leaf or of the
# tree (Σg², √, ratio, product); the loss scale's division; clipvalue's clip is exact.
EXTRA_COST = {"clipnorm": (16, 0), "global_clipnorm": (16, 0), "loss_scale_factor": (1, 0)}
# ExponentialDecay: η·0.5^(t/20), a division, a power and a product.
SCHEDULE_COST = (2, 1)


def bound(preset, options=(), extra=(0, 0)):
    """rounding_bound between two float32 programs: STEPS steps of ``preset`` with ``options``."""
    costs = [step_cost(preset), extra] + [EXTRA_COST.get(option, (0, 0)) for option in options]
    return rounding_bound(STEPS, sum(c[0] for c in costs), sum(c[1] for c in costs), implementations=2)


PRESETS = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax", "Nadam", "Lion", "Lamb"]
# A matrix, and nested in a list a scalar and an empty leaf (keras accepts it).
SHAPES = {"matrix": (3, 4), "nested": [(), (0, 3)]}


def _loguniform(low, high):
    return lambda rng: float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _uniform(low, high):
    return lambda rng: float(rng.uniform(low, high))


DRAW = {
    "learning_rate": _loguniform(1e-4, 1e-1),
    "momentum": _uniform(0.1, 0.99),
    "rho": _uniform(0.5, 0.999),
    "beta_1": _uniform(0.5, 0.99),
    "beta_2": _uniform(0.9, 0.9999),
    "epsilon": _loguniform(1e-8, 1e-3),
    "initial_accumulator_value": _uniform(0.0, 1.0),
    "weight_decay": _loguniform(1e-4, 1e-1),
    "clipnorm": _loguniform(1e-2, 1e3),
    "clipvalue": _loguniform(1e-2, 1e2),
    "global_clipnorm": _loguniform(1e-2, 1e3),
    "loss_scale_factor": _loguniform(1e-1, 1e4),
}
OWN = {
    "SGD": ["learning_rate"],
    "Adagrad": ["learning_rate", "initial_accumulator_value", "epsilon"],
    "RMSprop": ["learning_rate", "rho", "epsilon"],
    "Adam": ["learning_rate", "beta_1", "beta_2", "epsilon"],
    "AdamW": ["learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon"],
    "Adadelta": ["learning_rate", "rho", "epsilon"],
    "Adamax": ["learning_rate", "beta_1", "beta_2", "epsilon"],
    "Nadam": ["learning_rate", "beta_1", "beta_2", "epsilon"],
    "Lion": ["learning_rate", "beta_1", "beta_2"],
    "Lamb": ["learning_rate", "beta_1", "beta_2", "epsilon"],
}
# keras optimizer attribute -> (adaptx state type, field, sign): the state both keep.
_ADAM_STATE = {"_momentums": ((AdamMoments, AmsgradMoments), "mu", 1),
               "_velocities": ((AdamMoments, AmsgradMoments), "nu", 1),
               "_velocity_hats": (AmsgradMoments, "nu_max", 1)}
STATE = {
    "SGD": {"momentums": (MomentState, "mu", 1)},  # both hold m = β·m − η·g
    "Adagrad": {"_accumulators": (AccumulatorState, "nu", 1)},
    "RMSprop": {"_velocities": (RmsState, "nu", 1), "_average_gradients": (RmsState, "mu", 1),
                "_momentums": (MomentState, "mu", -1)},  # keras keeps +η·d and subtracts it
    "Adam": _ADAM_STATE,
    "AdamW": _ADAM_STATE,
    "Adadelta": {"_accumulated_grads": (AdadeltaState, "nu", 1),
                 "_accumulated_delta_vars": (AdadeltaState, "delta", 1)},
    "Adamax": {"_m": (AdamaxMoments, "mu", 1), "_u": (AdamaxMoments, "nu", 1)},
    "Nadam": {"_momentums": (NadamMoments, "mu", 1), "_velocities": (NadamMoments, "nu", 1),
              "_u_product": (NadamMoments, "mu_product", 1)},
    "Lion": {"_momentums": (ScaleByLionState, "mu", 1)},
    "Lamb": {"_momentums": (AdamMoments, "mu", 1), "_velocities": (AdamMoments, "nu", 1)},
}


def case(preset, *drawn, exact=False, **fixed):
    """A parity case: ``drawn`` hyperparameters come from DRAW, ``fixed`` are given."""
    label = "-".join([preset, *drawn, *(f"{k}={v}" for k, v in fixed.items())])
    return pytest.param(preset, drawn, fixed, exact, id=label)


CASES = [
    case("SGD", exact=True),
    case("SGD", "momentum", exact=True),
    case("SGD", "momentum", nesterov=True, exact=True),
    case("SGD", "momentum", "clipnorm", exact=True),
    case("SGD", "momentum", "clipvalue", nesterov=True, exact=True),
    case("SGD", "global_clipnorm"),
    case("SGD", "loss_scale_factor", exact=True),
    case("SGD", "weight_decay"),
    case("SGD", "momentum", "weight_decay", nesterov=True),
    case("Adagrad"),
    case("Adagrad", "weight_decay", "clipvalue"),
    case("RMSprop"),
    case("RMSprop", centered=True),
    case("RMSprop", "momentum", "global_clipnorm"),
    case("RMSprop", "momentum", "weight_decay", "loss_scale_factor", centered=True),
    case("Adam"),
    case("Adam", amsgrad=True),
    case("Adam", "weight_decay", "clipnorm"),
    case("AdamW"),
    case("AdamW", "loss_scale_factor", amsgrad=True),
    case("Adadelta"),
    case("Adadelta", "weight_decay"),
    case("Adamax"),
    case("Adamax", "weight_decay", "global_clipnorm"),
    case("Nadam"),
    case("Nadam", "weight_decay", "clipvalue"),
    case("Lion", exact=True),
    case("Lion", "weight_decay", "global_clipnorm"),
    case("Lamb"),
    case("Lamb", "clipnorm", "loss_scale_factor"),
    case("Lamb", "weight_decay", "global_clipnorm"),
]


def _draw(label, names):
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    return {name: DRAW[name](rng) for name in names}, rng


def _problem(rng):
    """Params in ±[0.5, 2]; STEPS gradients per leaf, each coordinate ±10^U(−6, 3)."""
    def param(shape):
        return (rng.choice([-1, 1], shape) * rng.uniform(0.5, 2.0, shape)).astype(np.float32)

    def gradients(shape):
        shape = (STEPS, *shape)
        return (rng.choice([-1, 1], shape) * 10 ** rng.uniform(-6, 3, shape)).astype(np.float32)

    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    return jax.tree.map(param, SHAPES, is_leaf=is_shape), jax.tree.map(gradients, SHAPES, is_leaf=is_shape)


def run_both(keras_optimizer, tx, params, grads):
    """200 steps of each in one compiled program.

    Returns keras' params, keras' optimizer variables by id, adaptx's params and adaptx's state.
    """
    leaves, treedef = jax.tree.flatten(params)
    variables = [keras.Variable(p) for p in leaves]
    keras_optimizer.build(variables)

    def keras_step(carry, g):
        return keras_optimizer.stateless_apply(carry[1], jax.tree.leaves(g), carry[0]), None

    def adaptx_step(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        return (adaptx.apply_updates(p, updates), state), None

    @jax.jit
    def run(params, grads):
        keras_start = ([v.value for v in variables], [v.value for v in keras_optimizer.variables])
        keras_end = jax.lax.scan(keras_step, keras_start, grads)[0]
        adaptx_end = jax.lax.scan(adaptx_step, (params, tx.init(params)), grads)[0]
        return keras_end, adaptx_end

    (keras_params, keras_vars), (adaptx_params, adaptx_state) = run(params, grads)
    by_id = dict(zip(map(id, keras_optimizer.variables), keras_vars))
    return treedef.unflatten(keras_params), by_id, adaptx_params, adaptx_state


def deviation(got, want, start=0.0) -> float:
    """max|got − want| over a leaf, relative to max|want| or max|start| if larger."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.size == 0:
        return 0.0
    scale = max(np.max(np.abs(want)), np.max(np.abs(start)))
    return float(np.max(np.abs(got - want)) / scale) if scale else float(np.max(np.abs(got)))


def params_deviation(got, want, start) -> float:
    return max(jax.tree.leaves(jax.tree.map(deviation, got, want, start)))


def _node(state, kind):
    found = [n for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, kind)) if isinstance(n, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in the adaptx state, found {len(found)}"
    return found[0]


def state_deviations(preset, keras_optimizer, keras_vars, adaptx_state) -> dict:
    """Deviation of every keras optimizer variable that has an adaptx counterpart."""
    out = {}
    for attr, (kind, field, sign) in STATE[preset].items():
        theirs = getattr(keras_optimizer, attr, [])
        theirs = [v for v in (theirs if isinstance(theirs, list) else [theirs]) if v is not None]
        if theirs:
            ours = jax.tree.leaves(getattr(_node(adaptx_state, kind), field))
            assert len(ours) == len(theirs), attr
            out[attr] = max(deviation(sign * a, keras_vars[id(k)]) for a, k in zip(ours, theirs))
    return out


@pytest.mark.parametrize("preset, drawn, fixed, exact", CASES)
def test_matches_keras(preset, drawn, fixed, exact, request):
    kwargs, rng = _draw(request.node.callspec.id, OWN[preset] + list(drawn))
    kwargs.update(fixed)
    params, grads = _problem(rng)
    keras_optimizer = getattr(keras.optimizers, preset)(**kwargs)
    ours_tx = getattr(kx, preset)(**kwargs)
    keras_params, keras_vars, ours, state = run_both(keras_optimizer, ours_tx, params, grads)

    within = bound(preset, kwargs)
    worst = params_deviation(ours, keras_params, params)
    assert worst <= within, f"params deviate by {worst:.2e} > {within:.2e} with {kwargs}"
    states = state_deviations(preset, keras_optimizer, keras_vars, state)
    assert all(d <= within for d in states.values()), f"state deviates: {states} > {within:.2e} with {kwargs}"
    if exact:
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(keras_params)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["SGD", "RMSprop", "Adam"])
def test_learning_rate_schedule_matches_keras(preset, request):
    """A keras LearningRateSchedule, read at the step count, also in the decay and momentum buffers."""
    kwargs, rng = _draw(request.node.callspec.id, OWN[preset] + ["weight_decay"])
    kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(kwargs["learning_rate"], 20, 0.5)
    if preset != "Adam":
        kwargs["momentum"] = DRAW["momentum"](rng)
    params, grads = _problem(rng)
    keras_params, _, ours, _ = run_both(
        getattr(keras.optimizers, preset)(**kwargs), getattr(kx, preset)(**kwargs), params, grads
    )
    assert params_deviation(ours, keras_params, params) <= bound(preset, kwargs, SCHEDULE_COST)


def test_suggested_gradient_accumulation_matches_keras():
    """The error for gradient_accumulation_steps points to adaptx.accumulate_gradients; it gives keras' numbers."""
    kwargs, rng = _draw("accumulation", OWN["Adam"])
    params, grads = _problem(rng)
    tx = adaptx.accumulate_gradients(kx.Adam(**kwargs), 3)
    keras_params, _, ours, _ = run_both(
        keras.optimizers.Adam(**kwargs, gradient_accumulation_steps=3), tx, params, grads
    )
    # the mean of 3 gradients: two sums and a division per step
    assert params_deviation(ours, keras_params, params) <= bound("Adam", extra=(3, 0))


def test_suggested_parameter_average_matches_keras():
    """The error for use_ema points to optax.incremental_update; it gives keras' average."""
    kwargs, rng = _draw("ema", OWN["Adam"])
    momentum = DRAW["momentum"](rng)
    params, grads = _problem(rng)
    keras_optimizer = keras.optimizers.Adam(**kwargs, use_ema=True, ema_momentum=momentum)
    keras_optimizer.build([keras.Variable(p) for p in jax.tree.leaves(params)])
    tx = kx.Adam(**kwargs)

    @jax.jit
    def run(params, grads):
        keras_vars = [v.value for v in keras_optimizer.variables]
        trainable = jax.tree.leaves(params)

        def keras_step(carry, g):
            return keras_optimizer.stateless_apply(carry[1], jax.tree.leaves(g), carry[0]), None

        def adaptx_step(carry, g):
            p, state, average, first = carry
            updates, state = tx.update(g, state, p)
            p = adaptx.apply_updates(p, updates)
            average = jax.lax.cond(
                first, lambda: p, lambda: optax.incremental_update(p, average, 1 - momentum)
            )
            return (p, state, average, jnp.array(False)), None

        keras_end = jax.lax.scan(keras_step, (trainable, keras_vars), grads)[0]
        adaptx_end = jax.lax.scan(adaptx_step, (params, tx.init(params), params, jnp.array(True)), grads)[0]
        return keras_end[1], adaptx_end[2]

    keras_vars, average = run(params, grads)
    by_id = dict(zip(map(id, keras_optimizer.variables), keras_vars))
    keras_average = [by_id[id(v)] for v in keras_optimizer._model_variables_moving_average]
    # the average (1 − m)·θ + m·ā: three operations per step on top of Adam's θ
    worst = max(map(deviation, jax.tree.leaves(average), keras_average, jax.tree.leaves(params)))
    assert worst <= bound("Adam", extra=(3, 0))


@pytest.mark.parametrize("preset", PRESETS)
def test_signature_is_keras(preset):
    """Same argument names, order and defaults as the keras class (keras' **kwargs aside)."""
    theirs = inspect.signature(getattr(keras.optimizers, preset).__init__).parameters
    theirs = [(p.name, p.default) for p in theirs.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]
    ours = [(p.name, p.default) for p in inspect.signature(getattr(kx, preset)).parameters.values()]
    assert ours == theirs


def test_hyperparameters_keep_keras_names():
    state = kx.Adam(weight_decay=0.01, clipnorm=1.0, loss_scale_factor=128.0).init({"w": jnp.ones(3)})
    assert set(adaptx.hyperparams(state)) == {
        "learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay", "clipnorm", "loss_scale_factor"
    }
    # keras reads clipnorm=0 as no clipping
    assert "clipnorm" not in adaptx.hyperparams(kx.SGD(clipnorm=0.0).init(jnp.ones(3)))


def test_set_beta_matches_construction_bit_for_bit():
    """A state set to β steps exactly like an optimizer built with the stored float32 β, whether
    set with set_hyperparams or optax's tree_set."""
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    grads = {"w": jnp.linspace(0.3, -2.0, 5)}

    def trajectory(tx, state):
        p = params
        for _ in range(3):
            updates, state = tx.update(grads, state, p)
            p = adaptx.apply_updates(p, updates)
        return p["w"]

    built = kx.Adam(beta_1=float(np.float32(0.8)), beta_2=float(np.float32(0.99)))
    tx = kx.Adam()
    expected = trajectory(built, built.init(params))
    state = adaptx.set_hyperparams(tx.init(params), beta_1=0.8, beta_2=0.99)
    np.testing.assert_array_equal(trajectory(tx, state), expected)
    state = optax.tree_utils.tree_set(tx.init(params), beta_1=jnp.float32(0.8), beta_2=jnp.float32(0.99))
    np.testing.assert_array_equal(trajectory(tx, state), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(use_ema=True), "incremental_update"),
    (dict(gradient_accumulation_steps=4), "accumulate_gradients"),
    (dict(clipnorm=1.0, clipvalue=1.0), "only one of"),
    (dict(beta_1=1.5), "beta_1"),
    (dict(epsilon=-1e-7), "epsilon"),
    (dict(clipnorm=-1.0), "clipnorm"),
    (dict(loss_scale_factor=0.0), "loss_scale_factor"),
    (dict(learning_rate=lambda: 0.1), "zero-argument"),
])
def test_unsupported_or_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kx.Adam(**kwargs)


def test_invalid_arguments_name_the_keras_argument():
    with pytest.raises(ValueError, match="weight_decay"):
        kx.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="momentum"):
        kx.RMSprop(momentum=-0.5)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        kx.Adagrad(initial_accumulator_value=-1.0)
    with pytest.raises(ValueError, match="beta_2"):
        adaptx.set_hyperparams(kx.Nadam().init(jnp.ones(2)), beta_2=1.0)


def test_clip_by_norm_of_a_zero_leaf_is_zero_with_a_finite_derivative():
    clip = adaptx.clip_by_norm(1.0)

    def clipped_sum(g):
        return jnp.sum(clip.update({"w": g}, clip.init(None))[0]["w"])

    zero = jnp.zeros(3)
    assert clipped_sum(zero) == 0
    assert jnp.all(jnp.isfinite(jax.grad(clipped_sum)(zero)))
