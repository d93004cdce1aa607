"""Bad input fails loudly and says what to do; traced hyperparameters are never rejected."""
import re

import jax
import jax.numpy as jnp
import pytest

import adaptx

# Allowed ranges as the issue states them, written out independently of adaptx._validate.
UNIT = "[0, 1)"
NONNEGATIVE = "[0, inf)"
POSITIVE = "(0, inf)"
BAD = {UNIT: [-0.1, 1.0, float("nan")], NONNEGATIVE: [-1e-3, float("inf"), float("nan")], POSITIVE: [0.0, -1.0]}
RANGE = {
    "learning_rate": NONNEGATIVE, "eps": NONNEGATIVE, "eps_root": NONNEGATIVE, "weight_decay": NONNEGATIVE,
    "initial_accumulator": NONNEGATIVE, "momentum_decay": NONNEGATIVE, "max_norm": POSITIVE,
    "b1": UNIT, "b2": UNIT, "decay": UNIT, "rho": UNIT, "momentum": UNIT,
}

# Every public factory with the hyperparameters it checks, and the arguments it needs besides.
CHECKED = [
    (adaptx.sgd, {"learning_rate": 0.1}, ["learning_rate", "momentum"]),
    (adaptx.adagrad, {"learning_rate": 0.1}, ["learning_rate", "initial_accumulator", "eps"]),
    (adaptx.rmsprop, {"learning_rate": 0.1}, ["learning_rate", "decay", "eps", "momentum"]),
    (adaptx.adam, {}, ["learning_rate", "b1", "b2", "eps"]),
    (adaptx.adamw, {}, ["learning_rate", "b1", "b2", "eps", "weight_decay"]),
    (adaptx.adadelta, {}, ["learning_rate", "rho", "eps"]),
    (adaptx.adamax, {}, ["learning_rate", "b1", "b2", "eps"]),
    (adaptx.nadam, {}, ["learning_rate", "b1", "b2", "eps", "momentum_decay"]),
    (adaptx.accumulate_squares, {}, ["eps", "initial_accumulator"]),
    (adaptx.scale_by_rms, {}, ["decay", "eps", "initial_accumulator"]),
    (adaptx.scale_by_adadelta, {}, ["rho", "eps"]),
    (adaptx.ema, {"decay": 0.9}, ["decay"]),
    (adaptx.trace, {"decay": 0.9}, ["decay"]),
    (adaptx.bias_correction, {"decay": 0.9}, ["decay"]),
    (adaptx.scale_by_adam, {}, ["b1", "b2", "eps", "eps_root"]),
    (adaptx.scale_by_adamax, {}, ["b1", "b2", "eps"]),
    (adaptx.scale_by_nadam, {}, ["b1", "b2", "eps", "momentum_decay"]),
    (adaptx.scale_by_learning_rate, {"learning_rate": 0.1}, ["learning_rate"]),
    (adaptx.add_decayed_weights, {"weight_decay": 0.1}, ["weight_decay"]),
    (adaptx.clip_by_global_norm, {"max_norm": 1.0}, ["max_norm"]),
]

INVALID = [
    pytest.param(make, needed, name, value, id=f"{make.__name__}-{name}={value}")
    for make, needed, names in CHECKED for name in names for value in BAD[RANGE[name]]
]


@pytest.mark.parametrize("make, needed, name, value", INVALID)
def test_invalid_hyperparameter_names_argument_and_range(make, needed, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must lie in {RANGE[name]}")):
        make(**{**needed, name: value})


def test_set_hyperparams_checks_concrete_values():
    state = adaptx.adam().init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=re.escape("b2 must lie in [0, 1)")):
        adaptx.set_hyperparams(state, b2=1.0)


@pytest.mark.parametrize("value", ["fast", 1j])
def test_non_real_hyperparameter_is_a_type_error(value):
    with pytest.raises(TypeError, match="learning_rate must be a real number"):
        adaptx.adam(learning_rate=value)


def test_boolean_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="b1=True"):
        adaptx.adam(b1=True)


PARAMS = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "head": [jnp.ones(())]}

# Default hyperparameters of each optimizer, as arrays that tracing will replace with tracers.
TRACEABLE = {
    "sgd": (adaptx.sgd, {"learning_rate": 0.1, "momentum": 0.9}),
    "adagrad": (adaptx.adagrad, {"learning_rate": 0.1, "eps": 1e-10, "initial_accumulator": 0.1}),
    "rmsprop": (adaptx.rmsprop, {"learning_rate": 0.1, "decay": 0.9, "eps": 1e-8, "momentum": 0.9}),
    "adam": (adaptx.adam, {"learning_rate": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    "adamw": (adaptx.adamw, {"learning_rate": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.1}),
    "adadelta": (adaptx.adadelta, {"learning_rate": 0.1, "rho": 0.9, "eps": 1e-6}),
    "adamax": (adaptx.adamax, {"learning_rate": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    "nadam": (adaptx.nadam, {"learning_rate": 0.1, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum_decay": 4e-3}),
    "blocks": (lambda **h: adaptx.chain(
        adaptx.clip_by_global_norm(h["max_norm"]), adaptx.scale_by_adam(h["b1"], h["b2"], eps_root=h["eps"]),
        adaptx.scale_by_rms(h["decay"], initial_accumulator=h["eps"]), adaptx.ema(h["decay"]),
        adaptx.trace(h["decay"]), adaptx.bias_correction(h["decay"]), adaptx.scale_by_adamax(h["b1"]),
        adaptx.scale_by_nadam(h["b1"], momentum_decay=h["eps"]), adaptx.accumulate_squares(h["eps"]),
        adaptx.scale_by_adadelta(h["decay"]), adaptx.add_decayed_weights(h["eps"]),
        adaptx.scale_by_learning_rate(h["max_norm"])),
        {"max_norm": 1.0, "b1": 0.9, "b2": 0.999, "eps": 1e-3, "decay": 0.9}),
}


def one_step_total(make, values):
    """Σ updates of one step of ``make(**values)``, built from the (possibly traced) values."""
    tx = make(**values)
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    return sum(jnp.sum(u) for u in jax.tree.leaves(updates))


TRANSFORMS = {
    "jit": lambda f, values: jax.make_jaxpr(jax.jit(f))(values),
    "grad": lambda f, values: jax.make_jaxpr(jax.grad(f))(values),
    "vmap": lambda f, values: jax.make_jaxpr(jax.vmap(f))(jax.tree.map(lambda v: jnp.stack([v, v]), values)),
}


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("name", sorted(TRACEABLE))
def test_traced_hyperparameters_are_accepted(name, transform):
    """Construction under jit, grad and vmap (traced only, never compiled)."""
    make, values = TRACEABLE[name]
    values = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    TRANSFORMS[transform](lambda v: one_step_total(make, v), values)


def test_traced_invalid_values_are_not_rejected():
    """Range checks need a concrete number; a traced one is the caller's to vouch for."""
    state = adaptx.adam().init(PARAMS)
    jax.make_jaxpr(lambda b1: adaptx.set_hyperparams(state, b1=b1))(jnp.float32(1.5))
    jax.make_jaxpr(lambda lr: adaptx.sgd(lr).init(PARAMS))(jnp.float32(-1.0))


STATEFUL = {name: make for name, (make, _) in TRACEABLE.items() if name != "blocks"}


def renamed(tree):
    return {"layer": {"w": tree["layer"]["w"], "bias": tree["layer"]["b"]}, "head": tree["head"]}


MISMATCHES = {
    "renamed-leaf": (renamed, [r"['layer']['bias']", r"['layer']['b']"]),
    "missing-leaf": (lambda t: {"layer": t["layer"]}, [r"['layer']['b']", r"['head'][0]"]),
    "extra-leaf": (lambda t: {**t, "tail": jnp.ones(2)}, [r"extra leaf in the updates at ['tail']"]),
    "list-for-tuple": (lambda t: {**t, "head": tuple(t["head"])}, ["different containers"]),
    "broadcastable-shape": (lambda t: {**t, "layer": {**t["layer"], "w": jnp.ones(3)}},
                            [r"['layer']['w']", "(3,)", "(2, 3)"]),
    "scalar-for-vector": (lambda t: {**t, "layer": {**t["layer"], "b": jnp.ones(())}},
                          [r"['layer']['b']", "shape ()", "(3,)"]),
}


@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_mismatched_gradients_name_the_first_differing_path(name, mismatch):
    make, values = TRACEABLE[name]
    tx = make(**values)
    change, fragments = MISMATCHES[mismatch]
    with pytest.raises(ValueError) as raised:
        tx.update(change(PARAMS), tx.init(PARAMS), PARAMS)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize("tx", [adaptx.sgd(0.1), adaptx.scale_by_learning_rate(0.1)], ids=["sgd", "scale"])
def test_stateless_updates_do_not_broadcast_into_params(tx):
    """With no state to compare against, the wrong shape must still not broadcast onto the params."""
    params = {"w": jnp.ones((2, 3))}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    with pytest.raises(ValueError, match=re.escape("['w']")):
        adaptx.apply_updates(params, updates)


def test_add_decayed_weights_checks_params():
    tx = adaptx.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match=re.escape("['layer']['w']")):
        tx.update(PARAMS, tx.init(PARAMS), {**PARAMS, "layer": {**PARAMS["layer"], "w": jnp.ones(3)}})
    with pytest.raises(ValueError, match="needs params"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_state_of_another_optimizer_is_refused():
    with pytest.raises(ValueError, match="another optimizer"):
        adaptx.rmsprop(0.1).update(PARAMS, adaptx.adam().init(PARAMS), PARAMS)
