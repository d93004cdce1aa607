"""Hyperparameters are traced state: settable without recompiling, equal to construction, sweepable with vmap."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx
from harness import assert_trees_within, step_cost

STEPS = 5

# name -> (the optimizer at its base values, other values for every settable hyperparameter).
# Rates are at least 0.5 and every value is a float32 number, so a vmapped (traced, float32)
# 1 − β equals the one set_hyperparams rounds from double for a concrete value.
OPTIMIZERS = {
    "sgd": (functools.partial(adaptx.sgd, learning_rate=0.1, momentum=0.5), dict(learning_rate=0.25, momentum=0.75)),
    "adagrad": (functools.partial(adaptx.adagrad, learning_rate=0.1), dict(learning_rate=0.5, eps=0.125)),
    "rmsprop": (functools.partial(adaptx.rmsprop, learning_rate=0.01, momentum=0.5, centered=True),
                dict(learning_rate=0.125, decay=0.75, eps=0.0625, momentum=0.875)),
    "adam": (adaptx.adam, dict(learning_rate=0.125, b1=0.5, b2=0.75, eps=0.25)),
    "adamw": (adaptx.adamw, dict(learning_rate=0.125, b1=0.5, b2=0.75, eps=0.25, weight_decay=0.5)),
    "adadelta": (adaptx.adadelta, dict(learning_rate=0.5, rho=0.5, eps=0.25)),
    "adamax": (adaptx.adamax, dict(learning_rate=0.125, b1=0.5, b2=0.75, eps=0.25)),
    "nadam": (adaptx.nadam, dict(learning_rate=0.125, b1=0.5, b2=0.75, eps=0.25, momentum_decay=0.5)),
}

PARAMS = {"w": np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3), "b": np.float32(0.5)}
GRADS = [jax.tree.map(lambda p, t=t: np.cos(3.0 * p + t).astype(np.float32), PARAMS) for t in range(STEPS)]


def counted_step(tx):
    """A jitted train step and the list its Python body appends to on every trace."""
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state

    return step, traces


@functools.lru_cache(maxsize=None)
def base(name):
    """The base optimizer of ``name`` and its counted step, compiled once per test process."""
    tx = OPTIMIZERS[name][0]()
    return (tx, *counted_step(tx))


def run(step, state, params=PARAMS):
    for grads in GRADS:
        params, state = step(params, state, grads)
    return params, state


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_differ(a, b):
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_set_hyperparams_does_not_retrace(name):
    tx, step, traces = base(name)
    reference, _ = run(step, tx.init(PARAMS))
    # Each hyperparameter alone, then all of them mid-run: every one is read from the state.
    for key, value in OPTIMIZERS[name][1].items():
        changed, _ = run(step, adaptx.set_hyperparams(tx.init(PARAMS), **{key: value}))
        assert_trees_differ(changed, reference)
    params, state = step(PARAMS, tx.init(PARAMS), GRADS[0])
    run(step, adaptx.set_hyperparams(state, **OPTIMIZERS[name][1]), params)
    assert len(traces) == 1


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_set_hyperparams_equals_construction(name):
    make, values = OPTIMIZERS[name]
    tx, step, _ = base(name)
    constructed = make(**values)
    assert_trees_equal(
        run(step, adaptx.set_hyperparams(tx.init(PARAMS), **values)),
        run(counted_step(constructed)[0], constructed.init(PARAMS)),
    )


@pytest.mark.parametrize("name", ["adam", "rmsprop", "sgd", "nadam"])
def test_vmap_over_hyperparams_equals_each_member(name):
    tx, step, _ = base(name)
    members = [OPTIMIZERS[name][1], {k: v / 2 for k, v in OPTIMIZERS[name][1].items()}, {}]
    # A batch of three: the second values, half of them, and the base values.
    batch = {k: jnp.asarray([m.get(k, adaptx.hyperparams(tx.init(PARAMS))[k]) for m in members], jnp.float32)
             for k in OPTIMIZERS[name][1]}
    states = jax.vmap(lambda values: adaptx.set_hyperparams(tx.init(PARAMS), **values))(batch)
    params = jax.tree.map(lambda p: jnp.stack([p] * len(members)), PARAMS)
    swept = jax.jit(jax.vmap(lambda p, s, g: _step(tx, p, s, g), in_axes=(0, 0, None)))
    for grads in GRADS:
        params, states = swept(params, states, grads)
    # Bit for bit where the step is + − × ÷ √ alone (SGD, RMSprop); where it has transcendentals
    # (the bias corrections, NAdam's schedule) vmap runs them on batched β and step counts in
    # XLA's vector kernels, not its scalar ones: two float32 programs, equal to rounding.
    ops, transcendentals = step_cost(name)
    for i in range(len(members)):
        own = adaptx.set_hyperparams(tx.init(PARAMS), **{k: v[i] for k, v in batch.items()})
        member = jax.tree.map(lambda x: x[i], (params, states))
        if transcendentals:
            assert_trees_within(member, run(step, own), STEPS, ops, transcendentals)
        else:
            assert_trees_equal(member, run(step, own))


def _step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return adaptx.apply_updates(params, updates), state


def staircase(count):
    """Exact float32 constants, so a schedule read inside jit equals one read outside."""
    return jnp.where(count < 2, 0.125, jnp.where(count < 4, 0.0625, 0.03125))


def test_schedule_is_read_at_the_step_count():
    scheduled = adaptx.adam(staircase)
    step, _ = counted_step(scheduled)
    tx, manual_step, _ = base("adam")
    params, state = PARAMS, scheduled.init(PARAMS)
    manual_params, manual = PARAMS, tx.init(PARAMS)
    for t, grads in enumerate(GRADS):
        params, state = step(params, state, grads)
        manual = adaptx.set_hyperparams(manual, learning_rate=staircase(t))
        manual_params, manual = manual_step(manual_params, manual, grads)
    assert_trees_equal(params, manual_params)
    assert "learning_rate" not in adaptx.hyperparams(state)  # a schedule is not state


def test_a_schedule_cannot_be_set():
    state = adaptx.adam(staircase).init(PARAMS)
    with pytest.raises(ValueError, match="no hyperparameter 'learning_rate'.*Schedules"):
        adaptx.set_hyperparams(state, learning_rate=0.1)


def test_unknown_hyperparameter_is_named():
    state = adaptx.adam().init(PARAMS)
    with pytest.raises(ValueError, match=r"no hyperparameter 'beta1'.*'b1'"):
        adaptx.set_hyperparams(state, beta1=0.9)


def test_absent_momentum_says_how_to_make_it_settable():
    with pytest.raises(ValueError, match="momentum > 0"):
        adaptx.set_hyperparams(adaptx.sgd(0.1).init(PARAMS), momentum=0.9)


def test_shape_mismatch_points_to_vmap():
    state = adaptx.adam().init(PARAMS)
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar.*shape \(3,\).*vmap"):
        adaptx.set_hyperparams(state, learning_rate=jnp.full(3, 1e-3))


def test_set_hyperparams_finds_the_optimizer_inside_a_chain():
    tx = optax.chain(optax.clip_by_global_norm(1.0), adaptx.adam(1e-3))
    state = adaptx.set_hyperparams(tx.init(PARAMS), learning_rate=0.5)
    assert adaptx.hyperparams(state)["learning_rate"] == 0.5
    assert adaptx.hyperparams(state[1])["learning_rate"] == 0.5
