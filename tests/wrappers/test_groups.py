"""Parameter groups: masked and partition route labelled subtrees to different transformations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import assert_trees_within, relative_error, rounding_bound, step_cost

rng = np.random.default_rng(0)
PARAMS = {
    "body": {"dense": {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "b": jnp.zeros(3)},
             "norm": {"scale": jnp.ones(3)}},
    "head": {"w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32), "b": jnp.zeros(2)},
}
GRADS = [jax.tree.map(lambda p, s=s: jnp.asarray(np.random.default_rng(s).standard_normal(p.shape), p.dtype), PARAMS)
         for s in range(3)]


def is_matrix(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def train(tx, params=PARAMS, grads=GRADS):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state

    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


# The groups' runs are other XLA programs of the same Adam steps: two float32 programs over
# len(GRADS) steps (harness.rounding_bound).
ADAM_BOUND = rounding_bound(len(GRADS), *step_cost("adam"), implementations=2)


def assert_trees_close(got, want):
    assert_trees_within(got, want, len(GRADS), *step_cost("adam"), implementations=2)


def test_masked_passes_masked_out_leaves_through_and_keeps_no_state_for_them():
    tx = adaptx.masked(adaptx.sgd(0.1, momentum=0.9), is_matrix)
    state = tx.init(PARAMS)
    momentum = state.inner_state.inner_state[0].mu
    assert len(jax.tree.leaves(momentum)) == 2  # the two matrices, nothing for biases and norms
    updates, _ = tx.update(GRADS[0], state, PARAMS)
    np.testing.assert_array_equal(updates["head"]["b"], GRADS[0]["head"]["b"])
    np.testing.assert_allclose(updates["head"]["w"], -0.1 * GRADS[0]["head"]["w"],
                               rtol=rounding_bound(1, *step_cost("sgd"), implementations=2))


def test_adamw_mask_decays_matrices_only():
    """adamw(mask=...) equals decayed adamw on the matrices and undecayed adamw on the rest."""
    got, _ = train(adaptx.adamw(0.1, weight_decay=0.5, mask=is_matrix))
    labels = jax.tree.map(lambda matrix: "decay" if matrix else "no_decay", is_matrix(PARAMS))
    want, _ = train(adaptx.partition(
        {"decay": adaptx.adamw(0.1, weight_decay=0.5), "no_decay": adaptx.adamw(0.1, weight_decay=0.0)}, labels))
    assert_trees_close(got, want)
    undecayed, _ = train(adaptx.adamw(0.1, weight_decay=0.0))
    assert not np.allclose(got["head"]["w"], undecayed["head"]["w"])
    assert relative_error(got["head"]["b"], undecayed["head"]["b"]) <= ADAM_BOUND


def test_partition_gives_the_head_its_own_learning_rate():
    """Each group's run equals that optimizer run alone on its subtree; labels given as a prefix tree."""
    tx = adaptx.partition({"body": adaptx.adam(1e-3), "head": adaptx.adam(1e-1)}, {"body": "body", "head": "head"})
    got, state = train(tx)
    for label, lr in (("body", 1e-3), ("head", 1e-1)):
        alone, _ = train(adaptx.adam(lr), PARAMS[label], [g[label] for g in GRADS])
        assert_trees_close(got[label], alone)
    assert int(state.inner_states["head"].count) == 3


def test_hyperparams_of_several_groups():
    tx = adaptx.partition({"body": adaptx.adam(1e-3), "head": adaptx.sgd(0.1)},
                          lambda p: {"body": "body", "head": "head"})
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"found 2 optimizers.*state.inner_states\[label\] of an adaptx.partition"):
        adaptx.hyperparams(state)
    state = state.replace_group("head", adaptx.set_hyperparams(state.inner_states["head"], learning_rate=0.5))
    assert float(adaptx.hyperparams(state.inner_states["head"])["learning_rate"]) == 0.5
    assert float(adaptx.hyperparams(state.inner_states["body"])["learning_rate"]) == pytest.approx(1e-3)
    with pytest.raises(KeyError, match="no group 'tail'"):
        state.replace_group("tail", None)
    # One optimizer under a mask is still found directly.
    masked = adaptx.masked(adaptx.adam(1e-3), is_matrix)
    masked_state = adaptx.set_hyperparams(masked.init(PARAMS), b1=0.8)
    assert float(adaptx.hyperparams(masked_state)["b1"]) == pytest.approx(0.8)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"leaf at \['head'\]\['b'\] is labelled 'bias', which has no transformation"):
        adaptx.partition({"body": adaptx.sgd(0.1), "head": adaptx.sgd(0.1)},
                         {"body": "body", "head": {"w": "head", "b": "bias"}}).init(PARAMS)
    with pytest.raises(ValueError, match="mask must be a pytree with the params' structure"):
        adaptx.masked(adaptx.sgd(0.1), {"body": True}).init(PARAMS)
    with pytest.raises(TypeError, match="mask entries must be Python bools"):
        adaptx.masked(adaptx.sgd(0.1), jax.tree.map(lambda p: jnp.asarray(True), PARAMS)).init(PARAMS)
    with pytest.raises(ValueError, match="at least one"):
        adaptx.partition({}, "x")
