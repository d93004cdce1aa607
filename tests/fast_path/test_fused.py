"""update_and_apply: the one-pass kernel gives update + apply_updates' numbers for every optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx._src import kernels
from harness import leaf_bound, relative_error, rounding_bound, step_cost

OPTIMIZERS = {
    "adam": lambda: adaptx.adam(1e-2),
    "adamw": lambda: adaptx.adamw(1e-2, weight_decay=0.1),
    "adagrad": lambda: adaptx.adagrad(0.1, initial_accumulator=0.1),
    "rmsprop": lambda: adaptx.rmsprop(1e-2),
    # no kernel for these: update_and_apply must take the two-step path
    "amsgrad": lambda: adaptx.adam(1e-2, amsgrad=True),
    "rmsprop-centered": lambda: adaptx.rmsprop(1e-2, centered=True),
    "sgd": lambda: adaptx.sgd(0.1, momentum=0.9),
    "optax-chain": lambda: adaptx.chain(adaptx.scale_by_adam(), adaptx.scale_by_learning_rate(1e-2)),
}


COST = {"optax-chain": step_cost("adam")}


def random_tree(key, dtype):
    keys = jax.random.split(key, 5)
    return {
        "scalar": jax.random.normal(keys[0], (), dtype),
        "empty": jnp.zeros((0, 3), dtype),
        "nested": [jax.random.normal(keys[1], (3, 70001), dtype), (jax.random.normal(keys[2], (7,), dtype) * 50,)],
        "matrix": jax.random.normal(keys[3], (4, 5), dtype),
    }


def trajectories(tx, dtype, steps=12):
    params0 = random_tree(jax.random.PRNGKey(0), dtype)

    def two_step(p, s, g):
        u, s = tx.update(g, s, p)
        return adaptx.apply_updates(p, u), s

    def one_step(p, s, g):
        return adaptx.update_and_apply(tx, g, s, p)

    out = []
    for fn in (two_step, one_step):
        fn = jax.jit(fn)
        p, s = params0, tx.init(params0)
        for i in range(steps):
            # every third gradient is zero: exercises the safe square root
            g = jax.tree.map(lambda x: (jax.random.normal(jax.random.PRNGKey(i), x.shape) * (i % 3)).astype(x.dtype), p)
            p, s = fn(p, s, g)
        out.append((p, s))
    return out


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_one_pass_matches_two_steps(name, dtype):
    want, got = trajectories(OPTIMIZERS[name](), dtype)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        # The kernel rounds every operation correctly (no contraction); XLA may fuse a·b + c
        # and use vectorised division and square root that are an ulp off in a few elements
        # in 10⁴: two float32 programs over 12 steps (harness.leaf_bound), and in bfloat16
        # any of the 12 param roundings may fall on either side of a bfloat16 tie.
        if not jnp.issubdtype(w.dtype, jnp.floating):
            np.testing.assert_array_equal(g, w)
            continue
        bound = leaf_bound(w.dtype, 12, *(COST.get(name) or step_cost(name)), implementations=2)
        assert relative_error(g, w) <= bound, (relative_error(g, w), bound)


def test_kernel_is_used_one_call_per_group_of_leaves():
    assert kernels.available(), kernels.unavailable_reason()
    tx = adaptx.adam(1e-3)
    params = [jnp.full((i + 1,), 0.5) for i in range(kernels.LEAVES_PER_CALL + 1)]
    step = jax.jit(lambda p, s, g: adaptx.update_and_apply(tx, g, s, p))
    assert step.lower(params, tx.init(params), params).as_text().count(kernels.TARGET) == 2
    new, _ = step(params, tx.init(params), params)
    # first Adam step moves every coordinate by the learning rate, against the gradient's sign
    # (ε moves it by 2e-8 of that): one float32 step's rounding_bound
    for p in new:
        np.testing.assert_allclose(p, 0.5 - 1e-3, rtol=rounding_bound(1, *step_cost("adam")))


def test_float64_leaves_take_the_two_step_path():
    with jax.enable_x64(True):
        tx = adaptx.adam(1e-2)
        params = {"w": jnp.linspace(-1, 1, 5, dtype=jnp.float64)}
        fn = jax.jit(lambda p, s, g: adaptx.update_and_apply(tx, g, s, p))
        assert kernels.TARGET not in fn.lower(params, tx.init(params), params).as_text()
        new, _ = fn(params, tx.init(params), params)
        assert new["w"].dtype == jnp.float64


def test_set_hyperparams_reaches_the_kernel_without_retracing():
    tx = adaptx.adam(1e-2)
    params = {"w": jnp.ones((6,))}
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        return adaptx.update_and_apply(tx, g, s, p)

    state = tx.init(params)
    frozen, _ = step(params, adaptx.set_hyperparams(state, learning_rate=0.0), params)
    moved, _ = step(params, state, params)
    assert len(traces) == 1
    np.testing.assert_array_equal(frozen["w"], params["w"])
    assert np.all(np.asarray(moved["w"]) < 1)


def test_vmap_over_learning_rates():
    tx = adaptx.adam(1e-2)
    params = {"w": jnp.arange(4.0)}
    rates = jnp.array([0.0, 0.1])
    states = jax.vmap(lambda lr: adaptx.set_hyperparams(tx.init(params), learning_rate=lr))(rates)
    new, _ = jax.vmap(lambda s: adaptx.update_and_apply(tx, params, s, params))(states)
    for i, lr in enumerate(rates):
        one, _ = adaptx.update_and_apply(tx, params, adaptx.set_hyperparams(tx.init(params), learning_rate=lr), params)
        assert relative_error(new["w"][i], one["w"]) <= rounding_bound(1, *step_cost("adam"), implementations=2)
