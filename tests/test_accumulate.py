"""accumulate_gradients: k micro-batch calls equal one step on the batch k times as large."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx

K, MICRO = 4, 3
rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((K * MICRO, 5)), jnp.float32)
Y = jnp.asarray(rng.standard_normal((K * MICRO,)), jnp.float32)
PARAMS = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32), "b": jnp.zeros(()), "unused": None}


def loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def train(tx, batches):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
        return adaptx.apply_updates(params, updates), state, updates

    params, state, all_updates = PARAMS, tx.init(PARAMS), []
    for x, y in batches:
        params, state, updates = step(params, state, x, y)
        all_updates.append(updates)
    return params, state, all_updates


OPTIMIZERS = {
    "adam with a schedule": lambda: adaptx.adam(lambda step: 0.1 / (1.0 + step)),
    "sgd with momentum": lambda: adaptx.sgd(0.05, momentum=0.9),
    "adamw": lambda: adaptx.adamw(0.1, weight_decay=0.1),
    "centered rmsprop": lambda: adaptx.rmsprop(0.01, centered=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_k_micro_batches_equal_one_big_batch(name):
    steps = 3
    big = [(X, Y)] * steps
    micro = [(X[i * MICRO:(i + 1) * MICRO], Y[i * MICRO:(i + 1) * MICRO]) for i in range(K)] * steps
    want, want_state, _ = train(OPTIMIZERS[name](), big)
    got, state, updates = train(adaptx.accumulate_gradients(OPTIMIZERS[name](), K), micro)
    for leaf_got, leaf_want in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(leaf_got, leaf_want, rtol=2e-6, atol=1e-7)
    for call, u in enumerate(updates, start=1):
        is_step = call % K == 0
        assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(u)) == is_step, call
    # The inner optimizer counted 3 steps, not 12: schedules and bias corrections see real steps.
    assert int(state.inner_state.count) == int(want_state.count) == steps
    assert int(state.micro_step) == 0


def test_sum_is_float32_for_low_precision_grads_and_hyperparams_reach_inside():
    tx = adaptx.accumulate_gradients(adaptx.adam(0.1), 2)
    state = tx.init({"w": jnp.ones(3, jnp.bfloat16)})
    assert state.grad_sum["w"].dtype == jnp.float32
    state = adaptx.set_hyperparams(state, learning_rate=0.5)
    assert float(adaptx.hyperparams(state)["learning_rate"]) == 0.5


def test_bad_every_k():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="every_k must be a positive int"):
            adaptx.accumulate_gradients(adaptx.sgd(0.1), bad)
