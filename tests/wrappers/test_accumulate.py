"""accumulate_gradients: k micro-batch calls equal one step on the batch k times as large."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import gradient_condition, leaf_bound, relative_error, step_cost

K, MICRO = 4, 3
rng = np.random.default_rng(0)
X = jnp.asarray(rng.standard_normal((K * MICRO, 5)), jnp.float32)
Y = jnp.asarray(rng.standard_normal((K * MICRO,)), jnp.float32)
PARAMS = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32), "b": jnp.zeros(()), "unused": None}


def loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def loss_params(params, batch):
    return loss(params, *batch)


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


ALGORITHM = {"adam with a schedule": "adam", "sgd with momentum": "sgd", "adamw": "adamw",
             "centered rmsprop": "rmsprop"}
# The batch gradient is ROW_OPS roundings per row (x·w over 5, + b − y, 2·r·x) and a mean over
# 12 rows, which micro-batching reassociates (a mean of 4 means of 3): MEAN_OPS roundings,
# relative to Σ|terms|, so κ times that relative to the gradient (harness.gradient_condition).
ROW_OPS, MEAN_OPS = 10, 12


def params_along(params, updates):
    """The params each step saw, from the start and the updates."""
    along = [params]
    for u in updates[:-1]:
        along.append(jax.tree.map(lambda p, d: p if d is None else p + d, along[-1], u, is_leaf=lambda x: x is None))
    return along


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_k_micro_batches_equal_one_big_batch(name):
    steps = 3
    big = [(X, Y)] * steps
    micro = [(X[i * MICRO:(i + 1) * MICRO], Y[i * MICRO:(i + 1) * MICRO]) for i in range(K)] * steps
    want, want_state, want_updates = train(OPTIMIZERS[name](), big)
    got, state, updates = train(adaptx.accumulate_gradients(OPTIMIZERS[name](), K), micro)
    ops, transcendentals = step_cost(ALGORITHM[name])
    # the schedule 0.1/(1 + t): a sum and a division
    kappa = gradient_condition(loss_params, params_along(PARAMS, want_updates), [(X, Y)] * steps)
    ops += ROW_OPS + MEAN_OPS * kappa + (2 if "schedule" in name else 0)
    for leaf_got, leaf_want in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        bound = leaf_bound(leaf_want.dtype, steps, ops, transcendentals, implementations=2)
        assert relative_error(leaf_got, leaf_want) <= bound, (relative_error(leaf_got, leaf_want), bound)
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
