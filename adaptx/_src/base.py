"""The transformation protocol: a pair of pure functions over pytrees.

It is the same protocol as optax's, so adaptx and optax transformations
compose in either library's ``chain``.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src.validate import check_tree_match

PyTree = Any
Params = PyTree
Updates = PyTree
State = PyTree


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``."""

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]


class EmptyState(NamedTuple):
    """State of a transformation that keeps none."""


def identity() -> GradientTransformation:
    """Pass updates through unchanged: u = g."""
    return GradientTransformation(
            lambda params: EmptyState(), lambda updates, state, params=None: (updates, state)
    )


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states."""

    def init(params):
        return tuple(tx.init(params) for tx in transforms)

    def update(updates, state, params=None):
        if len(state) != len(transforms):
            raise ValueError(
                    f"chain of {len(transforms)} transformations got a state of length"
                    f" {len(state)}: was it made by a different optimizer?"
            )
        new_state = []
        for tx, s in zip(transforms, state):
            updates, s = tx.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


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
