"""flat_state: the same steps as the wrapped optimizer, with the state in one buffer per dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx._src.packing import pack, unpack
from harness import assert_trees_within, step_cost


def mixed_tree():
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    return {
        "w": [jax.random.normal(keys[0], (3, 40)), jnp.zeros((0,)), jax.random.normal(keys[1], ())],
        "h": jax.random.normal(keys[2], (5, 7)).astype(jnp.bfloat16),
        "b": jax.random.normal(keys[3], (9,)),
    }


def run(tx, step_fn, steps=4):
    params = mixed_tree()
    step = jax.jit(step_fn(tx))
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda x: (jax.random.normal(jax.random.PRNGKey(i), x.shape) * (i % 3)).astype(x.dtype), params)
        params, state = step(params, state, grads)
    return params, state


def one_pass(tx):
    return lambda p, s, g: adaptx.update_and_apply(tx, g, s, p)


def two_step(tx):
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return adaptx.apply_updates(p, updates), s
    return step


def test_pack_round_trip():
    tree = mixed_tree()
    flat = pack(tree)
    assert sorted(flat) == ["bfloat16", "float32"] and flat["float32"].shape == (130,)
    for a, b in zip(jax.tree.leaves(unpack(flat, tree)), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [lambda: adaptx.adam(1e-2), lambda: adaptx.adamw(1e-2), lambda: adaptx.adagrad(0.1),
                                  lambda: adaptx.rmsprop(1e-2)], ids=["adam", "adamw", "adagrad", "rmsprop"])
def test_kernel_on_flat_state_matches_per_leaf_state(make):
    tx = make()
    want, _ = run(tx, one_pass)
    got, state = run(adaptx.flat_state(tx), one_pass)
    # Bit for bit on any IEEE machine: the kernel is built with -ffp-contract=off and only
    # + − × ÷ √, so each element sees the same correctly rounded operations in either layout.
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(g, w)
    # one buffer per dtype and moment, however many leaves
    assert max(x.ndim for x in jax.tree.leaves(state)) == 1


@pytest.mark.parametrize("make, name", [(lambda: adaptx.adam(1e-2), "adam"), (lambda: adaptx.sgd(0.1, momentum=0.9), "sgd")],
                         ids=["adam", "sgd"])
def test_update_matches_wrapped_update(make, name):
    tx = make()
    want, _ = run(tx, two_step)
    for step_fn in (two_step, one_pass):  # sgd has no kernel: update_and_apply takes the two steps
        got, _ = run(adaptx.flat_state(tx), step_fn)
        # other programs (XLA's fusion of packed buffers, or the kernel): two float32 programs
        # over 4 steps, plus the bfloat16 leaf's roundings
        assert_trees_within(got, want, 4, *step_cost(name), implementations=2)


def test_hyperparams_are_settable():
    tx = adaptx.flat_state(adaptx.adam(1e-2))
    params = mixed_tree()
    state = adaptx.set_hyperparams(tx.init(params), learning_rate=0.0)
    assert float(adaptx.hyperparams(state)["learning_rate"]) == 0.0
    new, _ = adaptx.update_and_apply(tx, params, state, params)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
