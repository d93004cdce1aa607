"""Accumulator and update dtypes: float32 moments for half-precision params, chosen dtypes, float64 under x64.

Dtype checks run through ``jax.eval_shape`` (traced, never compiled); only
the float64 accuracy check executes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
import reference as ref
from harness import gradient_sequence, random_params, rounding_bound, step_cost, trajectory, worst_error

# name -> (factory taking the dtype options, the options it has, float64 reference).
OPTIMIZERS = {
    "sgd-momentum": (lambda **d: adaptx.sgd(0.01, momentum=0.9, **d), ("mu_dtype",),
                     lambda p: ref.SGD(p, 0.01, 0.9)),
    "adagrad": (lambda **d: adaptx.adagrad(0.1, **d), ("nu_dtype",), lambda p: ref.Adagrad(p, 0.1)),
    "rmsprop-centered-momentum": (lambda **d: adaptx.rmsprop(0.01, centered=True, momentum=0.9, **d),
                                  ("mu_dtype", "nu_dtype"),
                                  lambda p: ref.RMSProp(p, 0.01, centered=True, momentum=0.9)),
    "adam-amsgrad": (lambda **d: adaptx.adam(0.01, amsgrad=True, **d), ("mu_dtype", "nu_dtype"),
                     lambda p: ref.Adam(p, 0.01, amsgrad=True)),
    "adamw": (lambda **d: adaptx.adamw(0.01, **d), ("mu_dtype", "nu_dtype"),
              lambda p: ref.Adam(p, 0.01, weight_decay=1e-2)),
    "adadelta": (lambda **d: adaptx.adadelta(**d), ("nu_dtype",), lambda p: ref.Adadelta(p)),
    "adamax": (lambda **d: adaptx.adamax(**d), ("mu_dtype", "nu_dtype"), lambda p: ref.Adamax(p)),
    "nadam": (lambda **d: adaptx.nadam(**d), ("mu_dtype", "nu_dtype"), lambda p: ref.NAdam(p)),
}

# Which dtype option each accumulator field follows.
FIELD_OPTION = {"mu": "mu_dtype", "nu": "nu_dtype", "nu_max": "nu_dtype", "delta": "nu_dtype"}


def shapes_after_one_step(tx, params):
    """(updates, new state, new params) as ShapeDtypeStructs."""
    def step(params):
        updates, state = tx.update(params, tx.init(params), params)
        return updates, state, adaptx.apply_updates(params, updates)

    return jax.eval_shape(step, params)


def floating_dtypes(tree):
    return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def accumulators(state):
    """(field name, leaf) for every leaf under a moment field of the optimizer's inner state."""
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.inner_state)[0]:
        fields = [key.name for key in path if isinstance(key, jax.tree_util.GetAttrKey)]
        if fields and fields[-1] in FIELD_OPTION:
            found.append((fields[-1], leaf))
    return found


HALF_PRECISION = {"bf16": jnp.ones((2, 3), jnp.bfloat16), "f16": jnp.ones(3, jnp.float16),
                  "f32": jnp.ones((), jnp.float32)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_half_precision_params_get_float32_accumulators(name):
    updates, state, params = shapes_after_one_step(OPTIMIZERS[name][0](), HALF_PRECISION)
    assert floating_dtypes(state.inner_state) == {jnp.dtype(jnp.float32)}
    assert accumulators(state)
    for tree in (updates, params):
        assert jax.tree.map(lambda x: x.dtype, tree) == jax.tree.map(lambda x: x.dtype, HALF_PRECISION)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_accumulator_dtypes_are_respected(name):
    make, options, _ = OPTIMIZERS[name]
    chosen = {"mu_dtype": jnp.dtype(jnp.bfloat16), "nu_dtype": jnp.dtype(jnp.float16)}
    chosen = {option: chosen[option] for option in options}
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(())}
    updates, state, _ = shapes_after_one_step(make(**chosen), params)
    fields = accumulators(state)
    assert {FIELD_OPTION[field] for field, _ in fields} == set(options)
    for field, leaf in fields:
        assert leaf.dtype == chosen[FIELD_OPTION[field]], field
    assert floating_dtypes(updates) == {jnp.dtype(jnp.float32)}


def test_apply_updates_keeps_each_param_dtype():
    params = {"bf16": jnp.ones(2, jnp.bfloat16), "f16": jnp.ones(2, jnp.float16), "f32": jnp.ones(2), "none": None}
    updates = {"bf16": jnp.full(2, 0.5), "f16": jnp.full(2, 0.5), "f32": jnp.full(2, 0.5, jnp.bfloat16), "none": None}
    new = adaptx.apply_updates(params, updates)
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, params)
    assert new["none"] is None
    np.testing.assert_array_equal(np.asarray(new["bf16"], np.float32), [1.5, 1.5])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_float64_params_stay_float64_under_x64(name):
    """float64 throughout, to float64 accuracy: the float64 reference agrees within rounding_bound of
    two float64 programs over 20 steps, 1e-13 to 2e-13 (measured ≤ 1e-14)."""
    make, _, reference = OPTIMIZERS[name]
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = random_params(rng, np.float64)
        grads = gradient_sequence(params, 20, rng, np.float64)
        tx = make()
        state = tx.init(params)
        assert floating_dtypes(state) == {jnp.dtype(jnp.float64)}
        updates, seen = trajectory(tx)(state, params, grads, 20)
    assert floating_dtypes(updates) == {jnp.dtype(jnp.float64)}
    error, step, leaf = worst_error(updates, seen, grads, reference(jax.tree.leaves(params)).step)
    bound = rounding_bound(20, *step_cost(name), implementations=2, dtype=np.float64)
    assert error <= bound, f"relative error {error:.3g} > {bound:.3g} at step {step}, leaf {leaf}"
