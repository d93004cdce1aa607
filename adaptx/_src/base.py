"""The transformation protocol: a pair of pure functions over pytrees.

It is the same protocol as optax's, so adaptx and optax transformations
compose in either library's ``chain``.
"""
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from adaptx._src.validate import check_tree_match

PyTree = Any
Params = PyTree
Updates = PyTree
State = PyTree


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params=None, **extra_args) -> (updates, state)``.

    ``extra_args`` are optax's: keyword arguments (a loss value, a key, ...) a
    transformation may read and must otherwise ignore; :func:`chain` passes
    them to every member.
    """

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]


class EmptyState(NamedTuple):
    """State of a transformation that keeps none."""


def identity() -> GradientTransformation:
    """Pass updates through unchanged: u = g."""
    return GradientTransformation(
            lambda params: EmptyState(), lambda updates, state, params=None, **extra_args: (updates, state)
    )


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states."""

    # optax's own plain transformations take no extra arguments; they get none (as in optax.chain).
    takes_extra = [_takes_extra_args(tx.update) for tx in transforms]

    def init(params):
        return tuple(tx.init(params) for tx in transforms)

    def update(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(
                    f"chain of {len(transforms)} transformations got a state of length"
                    f" {len(state)}: was it made by a different optimizer?"
            )
        new_state = []
        for tx, s, takes in zip(transforms, state, takes_extra):
            updates, s = tx.update(updates, s, params, **(extra_args if takes else {}))
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def _takes_extra_args(update: Callable) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates``, each leaf keeping its param's dtype.

    Trees and shapes must match: a wrong-shaped update is an error, never broadcast.
    """
    check_tree_match(updates, params, "params")
    return jax.tree.map(
            lambda p, u: None if p is None else jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
            params,
            updates,
            is_leaf=lambda x: x is None,
    )
