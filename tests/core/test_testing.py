"""adaptx.testing.check_transformation passes a sound transformation and names the property a broken one breaks."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx.testing import check_transformation, random_like

PARAMS = {"w": jnp.ones((2, 3)), "b": [jnp.zeros(3, jnp.bfloat16), None], "s": jnp.float32(1.0)}


class Count(NamedTuple):
    count: jax.Array


def stateless(update):
    return adaptx.GradientTransformation(lambda params: adaptx.EmptyState(),
                                         lambda updates, state, params=None: (update(updates), state))


def sign_descent(lr=0.1):
    """A user's block: u = −η·sign(g), counting its steps."""
    def update(updates, state, params=None):
        return jax.tree.map(lambda g: (-lr * jnp.sign(g)).astype(g.dtype), updates), Count(state.count + 1)

    return adaptx.GradientTransformation(lambda params: Count(jnp.zeros([], jnp.int32)), update)


def test_a_sound_user_block_passes_and_returns_the_last_step():
    updates, state = check_transformation(sign_descent(), PARAMS, steps=3)
    assert int(state.count) == 3
    assert updates["b"][0].dtype == jnp.bfloat16 and updates["b"][1] is None
    check_transformation(adaptx.chain(sign_descent(), adaptx.adam(1e-3)), PARAMS, random_like(PARAMS, seed=3))


def in_place_write(updates, state, params=None):
    updates["w"] *= 2  # NumPy input: writes into the caller's array
    return updates, state


def container_write(updates, state, params=None):
    updates["w"] = updates["w"] * 2  # replaces a leaf of the caller's dict
    return updates, state


class Step(NamedTuple):
    count: jax.Array


calls = []


def python_side_counter(updates, state, params=None):
    calls.append(None)  # counts every eager call but only the one trace under jit
    return jax.tree.map(lambda g: g * len(calls), updates), state


def stateful(update):
    return adaptx.GradientTransformation(lambda params: Step(jnp.zeros([], jnp.int32)), update)


def keeps_no_state(update):
    return adaptx.GradientTransformation(lambda params: adaptx.EmptyState(), update)


BROKEN = {
    r"tree fails at step 1: updates vs grads, \['b'\]\[0\]: \(shape, dtype\)":
        stateless(lambda u: jax.tree.map(lambda g: g.astype(jnp.float32), u)),
    "tree fails at step 1: updates vs grads": stateless(lambda u: {**u, "b": u["b"][0]}),
    "state fails at step 1: state after vs before": stateful(lambda u, s, p=None: (u, Step(s.count + 1.0))),
    "finite fails at step 1: updates": stateless(lambda u: jax.tree.map(lambda g: g * jnp.inf, u)),
    "jit fails at step 1: jitted updates": keeps_no_state(python_side_counter),
    r"pure fails at \(grads, params\)\[0\]\['w'\]: update wrote into its input array": keeps_no_state(in_place_write),
    "pure fails at update: it changed the containers": keeps_no_state(container_write),
}


@pytest.mark.parametrize("problem", BROKEN)
def test_a_broken_transformation_is_named(problem):
    with pytest.raises(AssertionError, match=f"check_transformation: {problem}"):
        check_transformation(BROKEN[problem], PARAMS)


def test_non_finite_inputs_are_rejected_up_front():
    with pytest.raises(AssertionError, match=r"finite fails at grads\['w'\]"):
        check_transformation(sign_descent(), PARAMS, {**PARAMS, "w": jnp.full((2, 3), np.nan)})
