"""make_train_step: the same numbers as a hand-written step, and donated inputs are consumed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import assert_trees_within, gradient_condition, relative_error, step_cost, rounding_bound, tanh_regression_loss_bound


def loss_fn(params, batch):
    x, y = batch
    pred = jnp.tanh(x @ params["w"] + params["b"])
    return jnp.mean((pred - y) ** 2)


def problem():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"w": jax.random.normal(keys[0], (5, 3)), "b": jnp.zeros((3,))}
    batch = (jax.random.normal(keys[1], (8, 5)), jax.random.normal(keys[2], (8, 3)))
    return params, batch


def hand_written(tx, params, batch, steps):
    @jax.jit  # jitted too: XLA rounds a fused division differently from an eager one
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state, loss

    state, along = tx.init(params), []
    for _ in range(steps):
        along.append(params)
        params, state, loss = step(params, state)
    return params, state, loss, along


# One step's roundings beyond the optimizer's: the model and squared error per row (x·w over 5,
# + b, tanh, − y, square: 9 and a transcendental), its gradient (5), and the sum over the 8 rows
# of the batch, κ times more relative to the gradient (harness.gradient_condition).
MODEL_OPS, ROWS = 14, 8


@pytest.mark.parametrize(
    "make_tx, name",
    [(lambda: adaptx.adam(1e-2), "adam"), (lambda: adaptx.flat_state(adaptx.adam(1e-2)), "adam"),
     (lambda: adaptx.rmsprop(1e-2, momentum=0.9), "rmsprop")],
    ids=["adam-kernel", "adam-flat-state", "rmsprop-momentum-jnp"],
)
def test_matches_hand_written_step(make_tx, name):
    params, batch = problem()
    tx = make_tx()
    want_params, want_state, want_loss, along = hand_written(tx, params, batch, steps=3)
    step = adaptx.make_train_step(loss_fn, tx)
    got_params, state = jax.tree.map(jnp.copy, params), tx.init(params)
    for _ in range(3):
        got_params, state, loss = step(got_params, state, batch)
    # the kernel, or another XLA program of the same step: two float32 programs over 3 steps
    ops, transcendentals = step_cost(name)
    ops += MODEL_OPS + ROWS * gradient_condition(loss_fn, along, [batch] * 3)
    assert_trees_within((got_params, state), (want_params, want_state), 3, ops, transcendentals + 1)
    # the loss is reported before the third step, at params two steps in
    params_bound = rounding_bound(2, ops, transcendentals + 1, implementations=2)
    assert relative_error(loss, want_loss) <= tanh_regression_loss_bound(params_bound, along[-1:], [batch])


def test_donates_params_and_state():
    params, batch = problem()
    tx = adaptx.adam(1e-2)
    step = adaptx.make_train_step(loss_fn, tx)
    params, state = jax.tree.map(jnp.copy, params), tx.init(params)
    new_params, new_state, _ = step(params, state, batch)
    big = lambda tree: [x for x in jax.tree.leaves(tree) if x.size > 1]
    assert all(x.is_deleted() for x in big(params) + big(state))
    assert not any(x.is_deleted() for x in big(new_params) + big(new_state) + list(batch))


def test_without_donation_keeps_inputs_and_returns_aux():
    params, batch = problem()
    tx = adaptx.adagrad(0.1)

    def with_aux(p, b):
        loss = loss_fn(p, b)
        return loss, {"double": 2 * loss}

    step = adaptx.make_train_step(with_aux, tx, donate=False, has_aux=True)
    state = tx.init(params)
    _, _, (loss, aux) = step(params, state, batch)
    assert not any(x.is_deleted() for x in jax.tree.leaves((params, state)))
    np.testing.assert_allclose(aux["double"], 2 * loss)
