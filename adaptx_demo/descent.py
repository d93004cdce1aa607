"""Gradient descent with any adaptx optimizer, compiled as one ``jax.lax.scan``."""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptx import GradientTransformation, apply_updates, set_hyperparams


class Descent(NamedTuple):
    """A run of T steps: ``params``/``losses`` at t = 0 … T, ``grads``/``updates`` at t = 0 … T − 1.

    Each field has a leading time axis (after a sweep axis, for :func:`sweep_learning_rates`).
    """

    params: Any
    losses: jax.Array
    grads: Any
    updates: Any


def descend(tx: GradientTransformation, loss: Callable, params, steps: int, state=None) -> Descent:
    """``steps`` updates of ``tx`` on ``loss`` from ``params``; traceable, so jit or vmap it."""

    def step(carry, _):
        params, state = carry
        value, grad = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grad, state, params)
        return (apply_updates(params, updates), state), (params, value, grad, updates)

    state = tx.init(params) if state is None else state
    (last, _), (path, losses, grads, updates) = jax.lax.scan(step, (params, state), length=steps)
    path = jax.tree.map(lambda history, p: jnp.concatenate([history, p[None]]), path, last)
    return Descent(path, jnp.append(losses, loss(last)), grads, updates)


def compiled(function: Callable, *args, options=None):
    """``jax.jit(function)(*args)``, compiled with XLA ``options`` (default: no backend optimizations).

    The demo's small runs take milliseconds and compiling them seconds, so optimizing
    the machine code would cost more time than it saves.
    """
    return jax.jit(function).lower(*args).compile(_QUICK_COMPILE if options is None else options)(*args)


_QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def run(tx: GradientTransformation, loss: Callable, params, steps: int) -> Descent:
    """:func:`descend`, compiled."""
    return compiled(lambda p: descend(tx, loss, p, steps), params)


def run_each(txs: dict, loss: Callable, params, steps: int) -> dict:
    """``{name: descend(tx, ...)}`` for every ``name: tx`` of ``txs``, compiled as one program.

    A program per optimizer would pay XLA's per-program cost once per optimizer.
    """
    return compiled(lambda p: {name: descend(tx, loss, p, steps) for name, tx in txs.items()}, params)


def sweep_learning_rates(tx: GradientTransformation, loss: Callable, params, steps: int, learning_rates) -> Descent:
    """One run per learning rate, batched by ``jax.vmap`` over ``set_hyperparams``; traceable."""

    def one(learning_rate):
        state = set_hyperparams(tx.init(params), learning_rate=learning_rate)
        return descend(tx, loss, params, steps, state)

    return jax.vmap(one)(jnp.asarray(learning_rates))


def effective_learning_rate(descent: Descent) -> np.ndarray:
    """|Δθₜ| / |gₜ| per step (norms over every param): the step taken per unit of gradient.

    In NumPy, on the host: eager jnp would compile a little program for each operation.
    """

    def norms(tree):
        leaves = [np.reshape(np.asarray(leaf), (np.shape(leaf)[0], -1)) for leaf in jax.tree.leaves(tree)]
        return np.linalg.norm(np.concatenate(leaves, axis=1), axis=1)

    return norms(descent.updates) / norms(descent.grads)


class OneOfState(NamedTuple):
    index: jax.Array  # int32 scalar: which transformation's update runs
    states: tuple  # every transformation's state; only the chosen one's ever changes


def one_of(txs) -> GradientTransformation:
    """The transformation ``txs[index]``, with ``index`` in the state: chosen by data, not by tracing.

    Under ``jax.vmap`` over the index, ``jax.lax.switch`` runs every branch and
    selects, so each run pays for every optimizer's update (elementwise, cheap
    next to the model); in exchange a program that trains many optimizers holds
    the model's forward and backward pass once instead of once per optimizer, and
    XLA (whose compile time is most of the demo's) compiles it once.
    Set the index, and the members' hyperparameters, with :func:`choose`.
    """
    txs = tuple(txs)

    def init(params):
        return OneOfState(jnp.zeros([], jnp.int32), tuple(tx.init(params) for tx in txs))

    def branch(k):
        def update(grads, states, params):
            updates, state = txs[k].update(grads, states[k], params)
            return updates, (*states[:k], state, *states[k + 1:])

        return update

    def update(grads, state, params=None):
        updates, states = jax.lax.switch(state.index, [branch(k) for k in range(len(txs))], grads, state.states, params)
        return updates, OneOfState(state.index, states)

    return GradientTransformation(init, update)


def choose(state, index, **hyperparams):
    """``state`` (holding a :func:`one_of`'s) set to run transformation ``index`` with ``hyperparams``.

    The hyperparameters are set in every member's state, through ``adaptx.set_hyperparams``.
    """
    def set_in(node):
        if not isinstance(node, OneOfState):
            return node
        members = tuple(set_hyperparams(s, **hyperparams) if hyperparams else s for s in node.states)
        return OneOfState(jnp.asarray(index, jnp.int32), members)

    return jax.tree.map(set_in, state, is_leaf=lambda node: isinstance(node, OneOfState))
