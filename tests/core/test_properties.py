"""Property tests: every optimizer and wrapper passes adaptx.testing.check_transformation on random pytrees.

Each example checks, through check_transformation: updates have the grads' tree,
shapes and dtypes; the state keeps its tree and dtypes; finite inputs give finite
outputs; jit equals eager; update leaves its inputs untouched.
"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import adaptx
from adaptx.testing import check_transformation
from harness import rounding_bound, step_cost

# A few shapes only, so eager op caches are shared across examples; () and (0,) are the edge cases.
SHAPES = [(), (0,), (3,), (2, 3), (1, 4)]
DTYPES = ["float32", "bfloat16", "float16", "float64"]


def arrays():
    finite = st.floats(-1e3, 1e3, allow_subnormal=False, width=32)
    return st.sampled_from(SHAPES).flatmap(lambda shape: hnp.arrays(np.float64, shape, elements=finite))


def has_array(tree) -> bool:
    return any(leaf is not None for leaf in jax.tree.leaves(tree))


def pytrees():
    """Nested dicts, lists and tuples of arrays and None, with at least one array."""
    leaves = st.one_of(st.none(), arrays(), arrays())
    trees = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.sampled_from(["w", "b", "norm", "head"]), children, max_size=3),
        ),
        max_leaves=5,
    )
    # A tree of Nones alone has nothing to check: give it an array beside it.
    return trees.flatmap(lambda tree: st.just(tree) if has_array(tree) else arrays().map(lambda a: {"w": a, "b": tree}))


def by_ndim(params):
    return jax.tree.map(lambda p: "matrix" if jnp.ndim(p) > 1 else "vector", params)


OPTIMIZERS = {
    "sgd": lambda: adaptx.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: adaptx.adagrad(0.1),
    "rmsprop": lambda: adaptx.rmsprop(0.01, centered=True, momentum=0.9),
    "adam": lambda: adaptx.adam(1e-3, amsgrad=True),
    "adamw": lambda: adaptx.adamw(1e-3),
    "adadelta": lambda: adaptx.adadelta(),
    "adamax": lambda: adaptx.adamax(),
    "nadam": lambda: adaptx.nadam(),
}
WRAPPERS = {
    "skip_nonfinite": lambda: adaptx.skip_nonfinite(adaptx.adam(1e-3), max_consecutive=2),
    "accumulate_gradients": lambda: adaptx.accumulate_gradients(adaptx.rmsprop(1e-2), 2),
    "masked": lambda: adaptx.masked(adaptx.adagrad(0.1), lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)),
    "partition": lambda: adaptx.partition({"matrix": adaptx.adamw(1e-3), "vector": adaptx.sgd(0.1)}, by_ndim),
    "adamw with a decay mask": lambda: adaptx.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)),
}

# Each wrapper's step (harness.STEP_COST): its inner optimizer's, the accumulation's mean one more.
WRAPPER_COST = {"skip_nonfinite": step_cost("adam"), "accumulate_gradients": (step_cost("rmsprop")[0] + 2, 0),
                "masked": step_cost("adagrad"), "partition": step_cost("adamw"),
                "adamw with a decay mask": step_cost("adamw")}


def jit_ulps(cost, steps=2):
    """check_transformation's jit-vs-eager tolerance, in ulps of each leaf's dtype: rounding_bound of
    two programs over its 2 steps (fusion changes roundings; XLA without FMA at SSE4.2 or AVX
    differs from eager by 2e-6 on AdamW), and the leaf's rounding to its dtype at each step."""
    return rounding_bound(steps, *cost, implementations=2) / float(jnp.finfo(jnp.float32).eps) + steps


# Each example compiles init and update afresh, so examples are few; "explain" re-runs a failure hundreds of times.
EXAMPLES = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])


def check(make, tree, dtype, seed, cost):
    # float64 needs x64, scoped to this example so it cannot leak into other tests.
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
        rng = np.random.default_rng(seed)
        grads = jax.tree.map(lambda p: jnp.asarray(rng.uniform(-10, 10, p.shape), p.dtype), params)
        updates, _ = check_transformation(make(), params, grads, ulps=jit_ulps(cost))
        assert all(u.dtype == jnp.dtype(dtype) for u in jax.tree.leaves(updates))
    assert jnp.zeros(()).dtype == jnp.float32  # x64 did not leak


@pytest.mark.parametrize("name", OPTIMIZERS)
@EXAMPLES
@given(tree=pytrees(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_optimizer_properties(name, tree, dtype, seed):
    check(OPTIMIZERS[name], tree, dtype, seed, step_cost(name))


@pytest.mark.parametrize("name", WRAPPERS)
@settings(EXAMPLES, max_examples=3)
@given(tree=pytrees(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_wrapper_properties(name, tree, dtype, seed):
    check(WRAPPERS[name], tree, dtype, seed, WRAPPER_COST[name])
