"""Transformations under JAX's function transforms: jit, vmap over params, grad through training."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from harness import assert_trees_within, step_cost

STEPS = 3

OPTIMIZERS = {
    "sgd-nesterov": functools.partial(adaptx.sgd, 0.005, momentum=0.9, nesterov=True),
    "adagrad": functools.partial(adaptx.adagrad, 0.1),
    "rmsprop-centered-momentum": functools.partial(adaptx.rmsprop, 0.01, centered=True, momentum=0.9),
    "rmsprop-eps_in_sqrt-nesterov": functools.partial(
        adaptx.rmsprop, 0.01, eps_in_sqrt=True, momentum=0.9, nesterov=True),
    "adam-amsgrad": functools.partial(adaptx.adam, 0.01, amsgrad=True),
    "adamw": functools.partial(adaptx.adamw, 0.01),
    "adadelta": adaptx.adadelta,
    "adamax": adaptx.adamax,
    "nadam": adaptx.nadam,
}

# One zero column: its accumulators stay 0, the √0 path of every optimizer.
PARAMS = {"w": np.array([[1.0, -2.0, 0.0], [0.5, 3.0, 0.0]], np.float32), "b": np.float32(-1.5)}
CURVATURE = {"w": np.array([[1.0, 10.0, 0.0], [100.0, 0.1, 0.0]]), "b": 3.0}


def loss(params):
    """An ill-conditioned quadratic, ½ Σ aᵢθᵢ², with curvatures over four decades."""
    return sum(0.5 * jnp.sum(a * p * p) for a, p in zip(jax.tree.leaves(CURVATURE), jax.tree.leaves(params)))


def cost(name):
    """One step of ``name`` and the quadratic's gradient a·θ (STEP_COST)."""
    ops, transcendentals = step_cost(name)
    return ops + 1, transcendentals


def train_step(tx, params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return adaptx.apply_updates(params, updates), state


def train(tx, step, params=PARAMS, steps=STEPS):
    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_jit_equals_eager(name):
    tx = OPTIMIZERS[name]()
    step = functools.partial(train_step, tx)
    eager, jitted = train(tx, step), train(tx, jax.jit(step))
    # XLA fuses the jitted step and may round differently from op-by-op eager execution
    # (e.g. one fused multiply-add for two roundings): two float32 programs over STEPS steps,
    # the quadratic's gradient a·θ one more rounding per step.
    assert_trees_within(jitted, eager, STEPS, *cost(name))


@pytest.mark.parametrize("name", ["adam-amsgrad", "rmsprop-centered-momentum", "nadam"])
def test_vmap_over_params_equals_each_member(name):
    tx = OPTIMIZERS[name]()
    batch = [jax.tree.map(lambda p, k=k: p * (1 + k) - k, PARAMS) for k in range(3)]
    stacked = jax.tree.map(lambda *members: jnp.stack(members), *batch)
    swept = jax.jit(jax.vmap(functools.partial(train_step, tx)))
    states = jax.vmap(tx.init)(stacked)
    for _ in range(STEPS):
        stacked, states = swept(stacked, states)
    step = jax.jit(functools.partial(train_step, tx))
    # Bit for bit where the step is + − × ÷ √ alone (RMSprop): vmap maps each element through
    # the same correctly rounded operations. Not where it has transcendentals: under vmap the
    # step count is batched too, so the bias corrections (and NAdam's 0.96^(tψ)) run in XLA's
    # vector kernels, not its scalar ones, and agree to rounding only (two float32 programs).
    for i, params in enumerate(batch):
        member = jax.tree.map(lambda x: x[i], (stacked, states))
        if cost(name)[1]:
            assert_trees_within(member, train(tx, step, params), STEPS, *cost(name))
        else:
            jax.tree.map(np.testing.assert_array_equal, member, train(tx, step, params))


HYPERGRADIENT_STEPS = 20


def trained_loss(tx, state, params):
    """The loss after ``HYPERGRADIENT_STEPS`` unrolled steps of ``tx`` from ``state``."""
    def body(carry, _):
        return train_step(tx, *carry), None

    (params, _), _ = jax.lax.scan(body, (params, state), length=HYPERGRADIENT_STEPS)
    return loss(params)


def adam_loss(learning_rate, params):
    """The learning rate set into an existing state."""
    tx = adaptx.adam(1e-3)
    return trained_loss(tx, adaptx.set_hyperparams(tx.init(params), learning_rate=learning_rate), params)


def rmsprop_loss(learning_rate, params):
    """The learning rate passed at construction, inside the differentiated function."""
    tx = adaptx.rmsprop(learning_rate, centered=True, momentum=0.5)
    return trained_loss(tx, tx.init(params), params)


UNROLLED = {"adam": adam_loss, "rmsprop": rmsprop_loss}


@pytest.mark.parametrize("name", sorted(UNROLLED))
def test_hypergradient_matches_central_differences(name):
    """d loss / d η through 20 unrolled steps, against (L(η + h) − L(η − h)) / 2h.

    float64, so the difference quotient is itself accurate: with h = 1e-4·η its
    O(h²) truncation and ~1e-12/h rounding are both far below the 1e-7 asked
    for (measured gaps: 1e-10 for Adam, 4e-9 for RMSProp). The zero column of PARAMS
    keeps some accumulators at 0, where a naive √ has an infinite slope and
    would turn the hypergradient into NaN.
    """
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), PARAMS)
        unrolled = jax.jit(UNROLLED[name])
        learning_rate = 0.01
        h = 1e-4 * learning_rate
        gradient = float(jax.jit(jax.grad(UNROLLED[name]))(learning_rate, params))
        difference = float(unrolled(learning_rate + h, params) - unrolled(learning_rate - h, params)) / (2 * h)
    assert np.isfinite(gradient) and gradient != 0
    assert gradient == pytest.approx(difference, rel=1e-7)
