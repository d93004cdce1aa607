"""optax's own tools read and edit adaptx state correctly, and bad input is named.

Covers what a user of optax's idioms touches: ``tree_get``/``tree_set``,
``inject_hyperparams``, ``**extra_args`` through ``chain``, abstract and
complex params, and the errors for hyperparameters and trees that cannot work.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import adaptx
from adaptx.compat import keras as kx
from adaptx.compat import torch as tc

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.asarray(0.5)}
STEPS = 6
EPS32 = 2.0 ** -23

ALIASES = {
    "sgd": functools.partial(adaptx.sgd, 0.1, 0.5),
    "adagrad": functools.partial(adaptx.adagrad, 0.1),
    "rmsprop": functools.partial(adaptx.rmsprop, 0.01),
    "adam": functools.partial(adaptx.adam, 0.01),
    "adamw": functools.partial(adaptx.adamw, 0.01),
    "adadelta": functools.partial(adaptx.adadelta, 1.0),
    "adamax": functools.partial(adaptx.adamax, 0.01),
    "nadam": functools.partial(adaptx.nadam, 0.01),
}


def grads_at(t, params=PARAMS):
    def grad(p):
        if jnp.iscomplexobj(p):  # bounded in both parts, unlike cos of a complex number
            return (jnp.cos(3.0 * p.real + t) + 1j * jnp.sin(2.0 * p.imag - t)).astype(p.dtype)
        return jnp.cos(3.0 * jnp.asarray(p) + t)

    return jax.tree.map(grad, params)


def run(tx, state=None, params=PARAMS, steps=STEPS, **extra):
    state = tx.init(params) if state is None else state
    for t in range(steps):
        updates, state = tx.update(grads_at(t, params), state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params, state


def close(a, b, steps=STEPS):
    """Two float32 computations of the same numbers: a few ulp per op per step."""
    chex.assert_trees_all_close(a, b, rtol=16 * steps * EPS32, atol=1e-7)


# -- one count, tree_get / tree_set ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALIASES))
def test_tree_get_finds_the_one_count(name):
    _, state = run(ALIASES[name](), steps=3)
    assert int(optax.tree_utils.tree_get(state, "count")) == 3


@pytest.mark.parametrize("name", ["adam", "nadam", "rmsprop", "adadelta"])
def test_tree_set_gives_the_numbers_of_set_hyperparams(name):
    tx = ALIASES[name]()
    names = list(adaptx.hyperparams(tx.init(PARAMS)))
    rng = np.random.default_rng(len(name))
    # Rates below and above ½ (where 1 − β stops being exact in float32), other values scaled.
    values = {k: float(rng.uniform(0.3, 0.95)) if k in ("b1", "b2", "decay", "rho")
              else float(np.asarray(adaptx.hyperparams(tx.init(PARAMS))[k]) * rng.uniform(0.5, 2)) for k in names}
    via_set = run(tx, adaptx.set_hyperparams(tx.init(PARAMS), **values))[0]
    via_tree_set = run(tx, optax.tree_utils.tree_set(tx.init(PARAMS), **values))[0]
    via_arrays = run(tx, optax.tree_utils.tree_set(
        tx.init(PARAMS), **{k: jnp.float32(v) for k, v in values.items()}))[0]
    built = run(ALIASES[name].func(**{**dict(zip(("learning_rate",), ALIASES[name].args)), **{
        k: float(np.float32(v)) for k, v in values.items()}}))[0]
    chex.assert_trees_all_equal(via_set, via_arrays)
    chex.assert_trees_all_equal(via_set, built)  # set to v == built with float32(v), bit for bit
    close(via_set, via_tree_set)  # a Python float set by tree_set keeps its double complement


def test_tree_set_of_b1_leaves_the_second_moment_alone():
    tx = adaptx.adam(0.01)
    state = optax.tree_utils.tree_set(tx.init(PARAMS), b1=0.8)
    _, state = run(tx, state, steps=1)
    g = grads_at(0)
    chex.assert_trees_all_close(state.inner_state[0].mu, jax.tree.map(lambda x: 0.2 * x, g), rtol=4 * EPS32)
    chex.assert_trees_all_close(state.inner_state[0].nu, jax.tree.map(lambda x: 0.001 * x * x, g), rtol=8 * EPS32)


def test_print_is_no_longer_than_optax_inject_hyperparams():
    params = {"w": jnp.zeros(3)}
    ours = str(adaptx.adam(1e-3).init(params))
    theirs = str(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).init(params))
    assert len(ours) <= len(theirs), (ours, theirs)


# -- inject_hyperparams: the caller's arrays are used as given ---------------------------------

@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad", "adamw", "adamax"])
def test_inject_hyperparams_trains_like_optax(name):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, STEPS)
    ours = optax.inject_hyperparams(getattr(adaptx, name))(learning_rate=schedule)
    theirs = optax.inject_hyperparams(getattr(optax, name))(learning_rate=schedule)
    if name == "rmsprop":  # optax's defaults: ε inside the root
        ours = optax.inject_hyperparams(adaptx.rmsprop, static_args=("eps_in_sqrt",))(
            learning_rate=schedule, eps_in_sqrt=True)
    if name == "adagrad":
        ours = optax.inject_hyperparams(adaptx.adagrad, static_args=("eps_in_sqrt",))(
            learning_rate=schedule, initial_accumulator=0.1, eps=1e-7, eps_in_sqrt=True)
    if name == "adamw":
        ours = optax.inject_hyperparams(adaptx.adamw)(learning_rate=schedule, weight_decay=1e-4)
    first, _ = run(ours, steps=1)
    chex.assert_trees_all_equal(first, PARAMS)  # warm-up starts at 0: the injected value is used
    close(run(ours)[0], run(theirs)[0])


def test_inject_hyperparams_takes_a_traced_keras_momentum():
    tx = optax.inject_hyperparams(kx.SGD)(learning_rate=0.1, momentum=0.9)
    params, _ = jax.jit(lambda p: run(tx, params=p, steps=2))(PARAMS)
    close(params, run(kx.SGD(learning_rate=0.1, momentum=0.9), steps=2)[0])
    tx = optax.inject_hyperparams(kx.RMSprop)(learning_rate=0.1, momentum=0.5)
    jax.jit(lambda p: run(tx, params=p, steps=2))(PARAMS)


def test_a_jax_array_hyperparameter_is_not_copied_into_the_state():
    lr = jnp.asarray(0.1)
    state = adaptx.sgd(lr).init(PARAMS)
    assert "learning_rate" not in adaptx.hyperparams(state)
    with pytest.raises(ValueError, match="learning_rate.*jax arrays are not state"):
        adaptx.set_hyperparams(state, learning_rate=0.2)


# -- extra args, abstract, complex and unusual params ------------------------------------------

def test_extra_args_reach_blocks_through_chain_and_skip_plain_optax_ones():
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args)
        return updates, state

    reader = adaptx.GradientTransformation(lambda p: adaptx.EmptyState(), update)
    tx = adaptx.chain(optax.scale(1.0), reader, adaptx.adam(0.1))
    run(tx, steps=1, loss=jnp.asarray(1.0))
    assert list(seen[0]) == ["loss"]
    for make in ALIASES.values():
        run(make(), steps=1, loss=1.0)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_init_takes_abstract_params(name):
    tx = ALIASES[name]()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS)
    chex.assert_trees_all_equal_shapes_and_dtypes(tx.init(abstract), tx.init(PARAMS))
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(tx.init, PARAMS), tx.init(PARAMS))


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rmsprop", "adam", "adamax", "adamw"])
def test_complex_params_follow_optax(name):
    params = {"z": jnp.asarray([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)}
    make = {"adagrad": lambda: (adaptx.adagrad(0.1, 0.1, 1e-7, eps_in_sqrt=True), optax.adagrad(0.1)),
            "rmsprop": lambda: (adaptx.rmsprop(0.01, eps_in_sqrt=True), optax.rmsprop(0.01, decay=0.9, eps=1e-8)),
            "adamw": lambda: (adaptx.adamw(0.01, weight_decay=1e-4), optax.adamw(0.01)),
            "sgd": lambda: (adaptx.sgd(0.1, 0.9), optax.sgd(0.1, 0.9))}.get(
        name, lambda: (getattr(adaptx, name)(0.01), getattr(optax, name)(0.01)))
    ours, theirs = make()
    close(run(ours, params=params)[0], run(theirs, params=params)[0])
    assert jnp.abs(run(ours, params=params)[0]["z"].imag - params["z"].imag).max() > 0


def test_python_float_leaves_step():
    params = {"a": 1.0, "b": [2.0, 3.0]}
    chex.assert_trees_all_close(run(adaptx.adam(0.1), params=params)[0],
                                run(optax.adam(0.1), params=params)[0], rtol=16 * STEPS * EPS32)


def test_bfloat16_and_float16_hyperparameters_are_stored_as_float32():
    state = adaptx.rmsprop(ml_dtypes.bfloat16(0.01), decay=np.float16(0.5)).init(PARAMS)
    assert all(v.dtype == jnp.float32 for v in adaptx.hyperparams(state).values())
    assert float(adaptx.hyperparams(state)["learning_rate"]) == float(ml_dtypes.bfloat16(0.01))


# -- bad input is named --------------------------------------------------------------------------

def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "_src" not in message and "Rate(" not in message and "Tracer" not in message, message
    return message


@pytest.mark.parametrize("make, name", [
    (lambda: adaptx.adam(jnp.full(3, 1e-3)), "learning_rate"),
    (lambda: adaptx.adam(np.full(3, 1e-3)), "learning_rate"),
    (lambda: adaptx.rmsprop(0.1, decay=[0.9, 0.8]), "decay"),
    (lambda: adaptx.sgd(lambda count: jnp.full(2, 0.1)), "learning_rate"),
    (lambda: tc.Adam(lr=np.ones(2)), "lr"),
])
def test_non_scalar_hyperparameters_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=name) as excinfo:
        make()
    assert "scalar" in _message(excinfo)


@pytest.mark.parametrize("make, name", [
    (lambda: adaptx.adam(b2=0.99999999), "b2"),
    (lambda: adaptx.rmsprop(0.1, decay=1 - 1e-9), "decay"),
    (lambda: tc.Adam(betas=(0.9, 1 - 1e-10)), "betas"),
    (lambda: kx.Adam(beta_1=1 - 1e-10), "beta_1"),
])
def test_rates_that_round_to_one_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=name) as excinfo:
        make()
    assert "rounds to 1.0" in _message(excinfo)


def test_traced_hyperparameters_are_never_rejected_for_being_traced():
    @jax.jit
    def train(lr, b2):
        return run(adaptx.adam(lr, b2=b2), steps=2)[0]

    close(train(0.01, 0.99), run(adaptx.adam(0.01, b2=0.99), steps=2)[0])


@pytest.mark.parametrize("params, grads, where", [
    ({"w": jnp.ones(2), "step": jnp.asarray(3)}, None, r"params at \['step'\].*int32"),
    ({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.int32)}, r"updates at \['w'\].*int32"),
    ({"w": jnp.ones(2), "m": jnp.asarray(True)}, None, r"\['m'\].*bool"),
])
def test_integer_and_boolean_leaves_are_named(params, grads, where):
    for tx in (adaptx.adam(0.1), adaptx.sgd(0.1)):
        with pytest.raises(TypeError, match=where) as excinfo:
            state = tx.init(params)
            tx.update(grads, state, params)
        _message(excinfo)


def test_a_user_block_receives_a_plain_array_unless_it_declares_a_rate():
    received = {}

    def build(count, learning_rate, decay):
        received["decay"] = decay
        return adaptx.chain(adaptx.scale(1.0), adaptx.scale_by_learning_rate(learning_rate))

    adaptx.with_hyperparams(build, learning_rate=0.1, decay=0.9).init(PARAMS)
    assert isinstance(received["decay"], jax.Array)
    adaptx.with_hyperparams(build, rates=("decay",), learning_rate=0.1, decay=0.9).init(PARAMS)
    assert isinstance(received["decay"], adaptx.Rate)
    assert float(received["decay"].complement) == np.float32(1.0 - 0.9)
