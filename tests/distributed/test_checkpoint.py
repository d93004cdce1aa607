"""Checkpoints: a run restored mid-way with orbax continues bit-identically; a wrong optimizer is refused clearly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx import checkpoint

rng = np.random.default_rng(0)
PARAMS = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal(4), jnp.bfloat16), "s": jnp.float32(0.5), "frozen": None}
GRADS = [jax.tree.map(lambda p, s=s: jnp.asarray(np.random.default_rng(s).standard_normal(np.shape(p)), p.dtype),
                      PARAMS) for s in range(6)]

OPTIMIZERS = {
    "sgd": lambda: adaptx.sgd(0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda: adaptx.rmsprop(0.01, centered=True, momentum=0.5),
    "adam with a schedule": lambda: adaptx.adam(lambda step: 1e-2 * 0.9 ** step, amsgrad=True),
    "nadam": lambda: adaptx.nadam(),
    "guarded, accumulated, partitioned": lambda: adaptx.skip_nonfinite(adaptx.accumulate_gradients(
        adaptx.partition({"matrix": adaptx.adam(1e-2), "rest": adaptx.rmsprop(1e-2)},
                         {"w": "matrix", "b": "rest", "s": "rest", "frozen": "rest"}), 2), max_consecutive=4),
}


def stepper(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state

    return step


def is_hyper(node):
    return isinstance(node, adaptx.HyperparamsState)


def all_hyperparams(state) -> list:
    return [adaptx.hyperparams(n) for n in jax.tree.leaves(state, is_leaf=is_hyper) if is_hyper(n)]


def halve_hyperparams(state):
    """Halve each optimizer's learning rate (its eps where the learning rate is a schedule)."""
    def halve(node):
        name = "learning_rate" if "learning_rate" in node.hyperparams else "eps"
        return adaptx.set_hyperparams(node, **{name: node.hyperparams[name] / 2})

    return jax.tree.map(lambda n: halve(n) if is_hyper(n) else n, state, is_leaf=is_hyper)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resumed_run_is_bit_identical(name, tmp_path):
    tx = OPTIMIZERS[name]()
    step = stepper(tx)
    params, state = PARAMS, tx.init(PARAMS)
    for grads in GRADS[:3]:
        params, state = step(params, state, grads)
    state = halve_hyperparams(state)  # changed mid-run: the checkpoint must carry them
    checkpoint.save(tmp_path / "step3", params, state)
    uninterrupted = (params, state)
    for grads in GRADS[3:]:
        uninterrupted = step(*uninterrupted, grads)

    resumed = checkpoint.restore(tmp_path / "step3", OPTIMIZERS[name](), PARAMS)
    jax.tree.map(np.testing.assert_array_equal, all_hyperparams(resumed[1]), all_hyperparams(state))
    for grads in GRADS[3:]:
        resumed = step(*resumed, grads)
    assert jax.tree.structure(resumed) == jax.tree.structure(uninterrupted)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_restoring_into_another_optimizer_names_what_differs(tmp_path):
    tx = adaptx.adam(1e-3)
    checkpoint.save(tmp_path / "adam", PARAMS, tx.init(PARAMS))
    with pytest.raises(ValueError, match=r"the optimizer restored into has opt_state\.hyperparams\.momentum that"
                                         r" the checkpoint lacks.*restore with the optimizer, and params, that wrote"):
        checkpoint.restore(tmp_path / "adam", adaptx.sgd(0.1, momentum=0.9), PARAMS)
    with pytest.raises(ValueError, match=r"has opt_state\.inner_state\.0\.nu_max\.b \(and 2 more\) that the"
                                         r" checkpoint lacks"):
        checkpoint.restore(tmp_path / "adam", adaptx.adam(1e-3, amsgrad=True), PARAMS)
    wider = {**PARAMS, "w": jnp.zeros((3, 5))}
    with pytest.raises(ValueError, match=r"arrays in the checkpoint at \['opt_state\.inner_state\.0\.mu\.w'\] have"
                                         r" shape \(3, 4\) but the optimizer restored into there has shape \(3, 5\)"):
        checkpoint.restore(tmp_path / "adam", tx, wider)


def test_check_state_names_the_first_difference():
    checkpoint.check_state(adaptx.adam(1e-3), PARAMS, adaptx.adam(0.5).init(PARAMS))
    with pytest.raises(ValueError, match=r"the state this optimizer makes has hyperparams\.decay that"
                                         r" the given state lacks"):
        checkpoint.check_state(adaptx.rmsprop(1e-3), PARAMS, adaptx.adam(1e-3).init(PARAMS))


def test_abstract_state_allocates_nothing_and_matches_init():
    tx = adaptx.adam(1e-3)
    abstract = checkpoint.abstract_state(tx, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), PARAMS))
    real = tx.init(PARAMS)
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    assert all(isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (b.shape, b.dtype)
               for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)))
