"""adaptx optimizers in the training loops of their client libraries, against optax's.

Each test trains a tiny model for a few jitted steps the way the client library's
documentation does it, once with an adaptx optimizer and once with the optax
optimizer of the same equation, and checks that the loss falls and that the two
runs agree step by step:

(a) flax.nnx: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` under ``nnx.jit``;
(b) flax.linen: ``flax.training.train_state.TrainState`` and ``apply_gradients`` under ``jax.jit``;
(c) equinox: ``eqx.filter(model, eqx.is_array)`` params and ``eqx.apply_updates``
    under ``eqx.filter_jit``, and an equinox module used directly as the params;
(d) a ``jax.tree_util.register_dataclass`` params container.

The tolerance (``PER_UPDATE_RTOL``) is derived below from float32 arithmetic, not
fitted to a machine.
"""
import dataclasses
import functools

import chex
import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import adaptx

STEPS = 5
LR = 1e-2
X = jax.random.normal(jax.random.key(0), (8, 3))
Y = jnp.sin(X.sum(axis=1, keepdims=True))

# Both runs are float32 implementations of the same formula, so per update they differ by
# (i) rounding: ~10 float32 ops per element, each ≤ 2**-24 ≈ 6e-8 relative, ~1e-6 in all;
# (ii) for Adam, optax's bias correction 1 − β₂ᵗ, computed in float32: β₂ᵗ is within ~2 ulp
#     of 1 (2 × 2**-24 ≈ 1.2e-7; CPU's repeated squaring does better, an exp∘log pow no
#     worse), against 1 − β₂ᵗ ≥ 2e-3 for t ≥ 2 at β₂ = 0.999: ≤ 6e-5 relative in v̂,
#     ≤ 3e-5 in the update (through the square root); adaptx rounds 1 − β from double
#     (see test_optax_parity.py).
# So each update agrees to 4e-5 of its size (both, rounded up) and, as the updates add
# up, the params after t steps agree to 4e-5 × the path length Σ_{s≤t} max|p_s − p_{s−1}|
# of the reference (optax) run, per leaf. Over 5 steps the feedback of so small a param
# difference through the gradient is far below that; a learning rate off by 0.1% (1e-3
# relative in every update) already fails.
PER_UPDATE_RTOL = 4e-5


def assert_same_run(got, want):
    """``got``, ``want``: lists of params trees, the initial params first, then one per step."""
    chex.assert_trees_all_equal(got[0], want[0])
    path = jax.tree.map(lambda p: 0.0, want[0])
    for t in range(1, len(want)):
        path = jax.tree.map(lambda length, new, old: length + float(np.max(np.abs(np.asarray(new) - np.asarray(old)),
                                                                          initial=0.0)),
                            path, want[t], want[t - 1])
        jax.tree.map(
            lambda g, w, length: np.testing.assert_allclose(
                g, w, rtol=0, atol=PER_UPDATE_RTOL * length, err_msg=f"step {t}"),
            got[t], want[t], path)


def assert_loss_falls(losses):
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def snapshot(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def mse(prediction):
    return jnp.mean((prediction - Y) ** 2)


# ---- (a) flax.nnx --------------------------------------------------------------------------

class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 4, rngs=rngs)
        self.out = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.tanh(self.hidden(x)))


def _nnx_params(model):
    return snapshot(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _run_nnx(tx):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: mse(m(X)))(model)
        optimizer.update(model, grads)
        return loss

    params, losses = [_nnx_params(model)], []
    for _ in range(STEPS):
        losses.append(float(step(model, optimizer)))
        params.append(_nnx_params(model))
    assert int(optimizer.step[...]) == STEPS
    return losses, params


def test_nnx_optimizer_trains_like_optax_adam():
    losses, params = _run_nnx(adaptx.adam(LR))
    reference_losses, reference = _run_nnx(optax.adam(LR))
    assert_loss_falls(losses)
    assert_same_run(params, reference)


def test_nnx_optimizer_abstract_state():
    """``nnx.eval_shape`` of the optimizer (the sharded-init pattern) gives the shapes and
    dtypes of the concrete optimizer's state; ``tx.init`` then sees nnx.State of abstract leaves."""
    tx = adaptx.adam(LR)
    abstract = nnx.eval_shape(lambda: nnx.Optimizer(NnxMLP(nnx.Rngs(0)), tx, wrt=nnx.Param))
    concrete = nnx.Optimizer(NnxMLP(nnx.Rngs(0)), tx, wrt=nnx.Param)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        nnx.to_pure_dict(nnx.state(abstract)), nnx.to_pure_dict(nnx.state(concrete)))


# ---- (b) flax.linen + TrainState ------------------------------------------------------------

class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(4)(x)))


def _run_linen(tx):
    model = LinenMLP()
    params = model.init(jax.random.key(1), X)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state):
        loss, grads = jax.value_and_grad(lambda p: mse(state.apply_fn({"params": p}, X)))(state.params)
        return state.apply_gradients(grads=grads), loss

    params, losses = [snapshot(state.params)], []
    for _ in range(STEPS):
        state, loss = step(state)
        losses.append(float(loss))
        params.append(snapshot(state.params))
    assert int(state.step) == STEPS
    return losses, params


def test_linen_train_state_trains_like_optax_adam():
    losses, params = _run_linen(adaptx.adam(LR))
    reference_losses, reference = _run_linen(optax.adam(LR))
    assert_loss_falls(losses)
    assert_same_run(params, reference)


# ---- (c) equinox --------------------------------------------------------------------------

def _run_equinox(tx):
    model = eqx.nn.MLP(3, 1, 4, depth=1, activation=jnp.tanh, key=jax.random.key(2))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(lambda m: mse(jax.vmap(m)(X)))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    params, losses = [snapshot(eqx.filter(model, eqx.is_array))], []
    for _ in range(STEPS):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
        params.append(snapshot(eqx.filter(model, eqx.is_array)))
    return losses, params


def test_equinox_filtered_params_train_like_optax_adam():
    losses, params = _run_equinox(adaptx.adam(LR))
    reference_losses, reference = _run_equinox(optax.adam(LR))
    assert_loss_falls(losses)
    assert_same_run(params, reference)


def _run_equinox_module_params(tx):
    """An eqx.nn.Linear is a pytree of arrays only (its sizes are static fields): the params themselves."""
    linear = eqx.nn.Linear(3, 1, key=jax.random.key(3))
    opt_state = tx.init(linear)

    @jax.jit
    def step(linear, opt_state):
        loss, grads = jax.value_and_grad(lambda m: mse(jax.vmap(m)(X)))(linear)
        updates, opt_state = tx.update(grads, opt_state, linear)
        return optax.apply_updates(linear, updates), opt_state, loss

    params, losses = [snapshot(linear)], []
    for _ in range(STEPS):
        linear, opt_state, loss = step(linear, opt_state)
        assert isinstance(linear, eqx.nn.Linear)
        losses.append(float(loss))
        params.append(snapshot(linear))
    return losses, params


def test_equinox_module_as_params_trains_like_optax_adam():
    losses, params = _run_equinox_module_params(adaptx.adam(LR))
    reference_losses, reference = _run_equinox_module_params(optax.adam(LR))
    assert_loss_falls(losses)
    assert_same_run(params, reference)


# ---- (d) jax.tree_util.register_dataclass ---------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b"], meta_fields=["name"])
@dataclasses.dataclass(frozen=True)
class Affine:
    w: jax.Array
    b: jax.Array
    name: str = "affine"

    def __call__(self, x):
        return x @ self.w + self.b


def _run_dataclass(tx):
    params = Affine(w=jnp.full((3, 1), 0.1), b=jnp.zeros((1,)))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: mse(p(X)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adaptx.apply_updates(params, updates), opt_state, loss

    out, losses = [snapshot(params)], []
    for _ in range(STEPS):
        params, opt_state, loss = step(params, opt_state)
        assert isinstance(params, Affine) and params.name == "affine"
        losses.append(float(loss))
        out.append(snapshot(params))
    # the state holds the container too, and works abstractly
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(tx.init, params), opt_state)
    return losses, out


# Pairs of the same equation (see adaptx/_src/aliases.py); the tolerance argument above
# covers sgd and rmsprop too (rounding only, no bias correction).
SAME_AS_OPTAX = {
    "adam": (lambda: adaptx.adam(LR), lambda: optax.adam(LR)),
    "sgd-momentum": (lambda: adaptx.sgd(LR, momentum=0.9), lambda: optax.sgd(LR, momentum=0.9)),
    "rmsprop": (lambda: adaptx.rmsprop(LR, eps_in_sqrt=True), lambda: optax.rmsprop(LR)),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_OPTAX))
def test_registered_dataclass_params_train_like_optax(name):
    ours, theirs = SAME_AS_OPTAX[name]
    losses, params = _run_dataclass(ours())
    reference_losses, reference = _run_dataclass(theirs())
    assert_loss_falls(losses)
    assert_same_run(params, reference)
