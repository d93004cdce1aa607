"""skip_nonfinite: bad steps leave params and state untouched, are counted, and can make the run give up."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import adaptx

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1], jnp.bfloat16)}
GOOD = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]]), "b": jnp.array([0.5, -0.25], jnp.bfloat16)}


def poisoned(value):
    return {"w": GOOD["w"].at[1, 0].set(value), "b": GOOD["b"]}


GUARDED_ADAM = adaptx.skip_nonfinite(adaptx.adam(0.1))


@functools.cache
def jitted_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state, updates

    return jax.jit(step)


def run(tx, grads_per_step, params=PARAMS):
    state, trace = tx.init(params), []
    for grads in grads_per_step:
        params, state, updates = jitted_step(tx)(params, state, grads)
        trace.append((params, state, updates))
    return trace


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_bad_step_changes_nothing_and_is_counted(bad):
    (p1, s1, _), (p2, s2, u2), (p3, s3, _) = run(GUARDED_ADAM, [GOOD, poisoned(bad), GOOD])
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(u2))
    jax.tree.map(np.testing.assert_array_equal, (p1, s1.inner_state), (p2, s2.inner_state))
    assert (int(s2.skipped), int(s2.consecutive), bool(s2.gave_up)) == (1, 1, False)
    assert (int(s3.skipped), int(s3.consecutive)) == (1, 0)
    # The skipped step is invisible: the run equals one that never saw it.
    _, (q2, t2, _) = run(GUARDED_ADAM, [GOOD, GOOD])
    jax.tree.map(np.testing.assert_array_equal, (p3, s3.inner_state), (q2, t2.inner_state))


def test_gives_up_after_max_consecutive_and_stays_given_up():
    tx = adaptx.skip_nonfinite(adaptx.sgd(0.1, momentum=0.9), max_consecutive=2)
    trace = run(tx, [poisoned(jnp.nan), GOOD, poisoned(jnp.nan), poisoned(jnp.inf), GOOD])
    assert [bool(s.gave_up) for _, s, _ in trace] == [False, False, False, True, True]
    assert [int(s.consecutive) for _, s, _ in trace] == [1, 0, 1, 2, 0]
    assert int(trace[-1][1].skipped) == 3
    adaptx.raise_if_gave_up(trace[2][1])
    with pytest.raises(FloatingPointError, match=r"gave up: max_consecutive steps in a row.*\(3 skipped in all,"
                                                 r" 0 in a row now\)"):
        adaptx.raise_if_gave_up(trace[-1][1])


def test_gave_up_raises_inside_jit_through_checkify():
    tx = adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.skip_nonfinite(adaptx.adam(0.1), max_consecutive=1))

    @jax.jit
    @checkify.checkify
    def step(state, grads):
        _, state = tx.update(grads, state, PARAMS)
        adaptx.raise_if_gave_up(state)
        return state

    error, state = step(tx.init(PARAMS), GOOD)
    error.throw()
    error, _ = step(state, poisoned(jnp.nan))
    with pytest.raises(checkify.JaxRuntimeError, match=r"gave up.*\(1 skipped in all, 1 in a row now\)"):
        error.throw()


def test_hyperparams_reach_through_the_guard_and_vmap_works():
    state = adaptx.set_hyperparams(GUARDED_ADAM.init(PARAMS), learning_rate=0.5)
    assert float(adaptx.hyperparams(state)["learning_rate"]) == 0.5
    batch = jax.tree.map(lambda g, bad: jnp.stack([g, bad]), GOOD, poisoned(jnp.nan))
    updates, states = jax.jit(jax.vmap(GUARDED_ADAM.update, in_axes=(0, None, None)))(batch, state, PARAMS)
    assert np.asarray(states.skipped).tolist() == [0, 1]
    assert np.all(np.asarray(updates["w"][1]) == 0) and np.any(np.asarray(updates["w"][0]) != 0)


def test_errors():
    with pytest.raises(ValueError, match="max_consecutive must be a positive int"):
        adaptx.skip_nonfinite(adaptx.sgd(0.1), max_consecutive=0)
    with pytest.raises(ValueError, match="holds no skip_nonfinite guard"):
        adaptx.raise_if_gave_up(adaptx.sgd(0.1).init(PARAMS))
