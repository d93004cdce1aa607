"""Gradient accumulation: one optimizer step per k micro-batches."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.validate import check_tree_match
from adaptx._src.base import FusedTransformation, GradientTransformation, one_pass, update_then_apply


class AccumulateState(NamedTuple):
    micro_step: jax.Array  # int32: gradients summed since the inner optimizer last stepped, 0 … k − 1
    grad_sum: Any  # their sum, in the accumulator dtype (float32 for bfloat16/float16 grads)
    inner_state: Any


def accumulate_gradients(tx: GradientTransformation, every_k: int) -> GradientTransformation:
    """Step ``tx`` once every ``every_k`` calls, on the mean of the gradients seen since.

        S ← S + gᵢ                                            on every call
        (u, s) = tx.update(S / k, s),  S ← 0                  on calls k, 2k, 3k, …
        u = 0                                                 on the others

    With equal-sized micro-batches and a mean loss, S / k is the big batch's
    gradient, so k accumulated calls equal one step on the batch k times as
    large (as optax.MultiSteps). ``tx`` sees only the real steps: its step count,
    schedules and bias corrections advance once per k calls. The sum is kept in
    float32 for bfloat16/float16 gradients so small micro-batch gradients are
    not rounded away.
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ValueError(f"every_k must be a positive int, got {every_k!r}")

    def init(params):
        return AccumulateState(jnp.zeros([], jnp.int32), nx.zeros_like_tree(params), tx.init(params))

    def update(updates, state, params=None, **extra_args):
        check_tree_match(updates, state.grad_sum, "gradient sum")
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.grad_sum, updates)

        def step(_):
            mean = jax.tree.map(lambda s, g: (s / every_k).astype(g.dtype), grad_sum, updates)
            new_updates, inner = tx.update(mean, state.inner_state, params, **extra_args)
            return new_updates, inner, jax.tree.map(jnp.zeros_like, grad_sum)

        def wait(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner_state, grad_sum

        # lax.cond skips the inner optimizer's work on k − 1 of every k calls.
        ready = state.micro_step == every_k - 1
        updates, inner, grad_sum = jax.lax.cond(ready, step, wait, None)
        micro_step = jnp.where(ready, 0, state.micro_step + 1).astype(jnp.int32)
        return updates, AccumulateState(micro_step, grad_sum, inner)

    if one_pass(tx) is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        check_tree_match(grads, state.grad_sum, "gradient sum")
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.grad_sum, grads)

        def step(_):
            mean = jax.tree.map(lambda s, g: (s / every_k).astype(g.dtype), grad_sum, grads)
            new_params, inner = update_then_apply(tx, mean, state.inner_state, params)
            return new_params, inner, jax.tree.map(jnp.zeros_like, grad_sum)

        ready = state.micro_step == every_k - 1
        params, inner, grad_sum = jax.lax.cond(ready, step, lambda _: (params, state.inner_state, grad_sum), None)
        micro_step = jnp.where(ready, 0, state.micro_step + 1).astype(jnp.int32)
        return params, AccumulateState(micro_step, grad_sum, inner)

    return FusedTransformation(init, update, update_and_apply)
