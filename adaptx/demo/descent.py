"""Gradient descent with any adaptx optimizer, compiled as one ``jax.lax.scan``."""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from adaptx._src.base import GradientTransformation, apply_updates
from adaptx._src.hyperparams import set_hyperparams


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


def compiled(function: Callable, *args):
    """``jax.jit(function)(*args)``, compiled without XLA's backend optimizations.

    The demo's runs take milliseconds and compiling them seconds, so optimizing
    the machine code would cost more time than it saves.
    """
    return jax.jit(function).lower(*args).compile(_QUICK_COMPILE)(*args)


_QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def run(tx: GradientTransformation, loss: Callable, params, steps: int) -> Descent:
    """:func:`descend`, compiled."""
    return compiled(lambda p: descend(tx, loss, p, steps), params)


def sweep_learning_rates(tx: GradientTransformation, loss: Callable, params, steps: int, learning_rates) -> Descent:
    """One run per learning rate, batched by ``jax.vmap`` over ``set_hyperparams``; traceable."""

    def one(learning_rate):
        state = set_hyperparams(tx.init(params), learning_rate=learning_rate)
        return descend(tx, loss, params, steps, state)

    return jax.vmap(one)(jnp.asarray(learning_rates))


def effective_learning_rate(descent: Descent) -> jax.Array:
    """|Δθₜ| / |gₜ| per step (norms over every param): the step taken per unit of gradient."""

    def norms(tree):
        leaves = [jnp.reshape(leaf, (leaf.shape[0], -1)) for leaf in jax.tree.leaves(tree)]
        return jnp.linalg.norm(jnp.concatenate(leaves, axis=1), axis=1)

    return norms(descent.updates) / norms(descent.grads)
