"""The transformation protocol: a pair of pure functions over pytrees.

It is the same protocol as optax's, so adaptx and optax transformations
compose in either library's ``chain``.
"""
import inspect
from typing import Any, Callable, NamedTuple, Optional

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


class FusedTransformation(GradientTransformation):
    """A :class:`GradientTransformation` that also carries a one-pass step.

    ``update_and_apply(grads, state, params) -> (params, state)`` returns what
    ``update`` followed by :func:`apply_updates` would, in one pass over
    memory where a kernel can take the leaves. It is an attribute of this
    value, so it travels with the transformation: :func:`chain` and adaptx's
    wrappers compose it, and :func:`adaptx.update_and_apply` runs it. To
    optax and every other client this is a plain ``(init, update)`` pair.
    """

    def __new__(cls, init, update, update_and_apply):
        tx = super().__new__(cls, init, update)
        tx.__dict__["update_and_apply"] = update_and_apply
        return tx

    def __getnewargs__(self):
        return (self.init, self.update, self.update_and_apply)

    def __setattr__(self, name, value):
        raise AttributeError("a FusedTransformation is immutable")


def one_pass(tx: GradientTransformation) -> Optional[Callable]:
    """``tx``'s one-pass ``update_and_apply``, or None when it carries none."""
    return getattr(tx, "update_and_apply", None)


def with_one_pass(tx: GradientTransformation, update_and_apply: Optional[Callable]) -> GradientTransformation:
    """``tx`` carrying ``update_and_apply`` (see :class:`FusedTransformation`); ``tx`` itself when None."""
    if update_and_apply is None:
        return GradientTransformation(tx.init, tx.update)
    return FusedTransformation(tx.init, tx.update, update_and_apply)


def update_then_apply(tx: GradientTransformation, grads, state, params):
    """``tx``'s one-pass step when it has one, else ``update`` then :func:`apply_updates`."""
    fast = one_pass(tx)
    if fast is not None:
        return fast(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return apply_updates(params, updates), state


class EmptyState(NamedTuple):
    """State of a transformation that keeps none."""


def identity() -> GradientTransformation:
    """Pass updates through unchanged: u = g."""
    return GradientTransformation(
            lambda params: EmptyState(), lambda updates, state, params=None, **extra_args: (updates, state)
    )


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in order; the state is the tuple of their states.

    When the last one carries a one-pass step, so does the chain: the others
    transform the gradients, then that step updates and applies them.
    """
    # optax's own plain transformations take no extra arguments; they get none (as in optax.chain).
    takes_extra = [_takes_extra_args(tx.update) for tx in transforms]

    def init(params):
        return tuple(tx.init(params) for tx in transforms)

    def run(members, updates, states, params, extra_args):
        new_states = []
        for tx, s, takes in zip(members, states, takes_extra):
            updates, s = tx.update(updates, s, params, **(extra_args if takes else {}))
            new_states.append(s)
        return updates, tuple(new_states)

    def check(state):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transformations got a state of length"
                f" {len(state)}: was it made by a different optimizer?"
            )

    def update(updates, state, params=None, **extra_args):
        check(state)
        return run(transforms, updates, state, params, extra_args)

    tail = one_pass(transforms[-1]) if transforms else None
    if tail is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        check(state)
        grads, head = run(transforms[:-1], grads, state[:-1], params, {})
        params, last = tail(grads, state[-1], params)
        return params, (*head, last)

    return FusedTransformation(init, update, update_and_apply)


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
