"""Skip steps whose gradients are not finite, and give up after too many in a row."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from adaptx._src import numerics as nx
from adaptx._src.validate import concrete
from adaptx._src.base import FusedTransformation, GradientTransformation, one_pass, update_then_apply


class SkipNonfiniteState(NamedTuple):
    inner_state: Any
    skipped: jax.Array  # int32: steps skipped so far
    consecutive: jax.Array  # int32: skipped steps since the last finite one
    gave_up: jax.Array  # bool: ``consecutive`` reached ``max_consecutive``; stays set


def all_finite(tree: Any) -> jax.Array:
    """True when no leaf of ``tree`` holds a NaN or ±Inf (True for a tree without leaves)."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def skip_nonfinite(tx: GradientTransformation, max_consecutive: Optional[int] = None) -> GradientTransformation:
    """Apply ``tx`` only to gradients that are finite everywhere.

        (u, s) = tx.update(g, s)   if every gᵢ is finite
        (u, s) = (0, s)            otherwise: params and ``tx``'s state are left as they were

    The skip-and-count rule of dynamic loss scaling (Micikevicius et al., 2018,
    *Mixed Precision Training*, §3.2), kept apart from any loss scale. After
    ``max_consecutive`` skipped steps in a row ``gave_up`` is set in the state and
    stays set; training goes on, so the caller decides: read ``state.gave_up``, or
    call :func:`raise_if_gave_up` (a Python error outside jit, a checkify error inside).
    """
    if max_consecutive is not None and (isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int)
                                        or max_consecutive < 1):
        raise ValueError(f"max_consecutive must be a positive int or None, got {max_consecutive!r}")
    limit = jnp.iinfo(jnp.int32).max if max_consecutive is None else max_consecutive

    def init(params):
        # One fresh array per leaf: a donated step (make_train_step) cannot take one buffer twice.
        return SkipNonfiniteState(tx.init(params), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32),
                                  jnp.zeros([], jnp.bool_))

    def update(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        new_updates, new_inner = tx.update(updates, state.inner_state, params, **extra_args)
        # jnp.where rather than lax.cond: a batched predicate under vmap turns cond into both branches anyway.
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates)
        inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_inner, state.inner_state)
        consecutive = jnp.where(finite, 0, nx.increment(state.consecutive))
        skipped = jnp.where(finite, state.skipped, nx.increment(state.skipped))
        gave_up = state.gave_up | (consecutive >= limit)
        return updates, SkipNonfiniteState(inner, skipped, consecutive, gave_up)

    if one_pass(tx) is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        finite = all_finite(grads)
        # lax.cond here: the skipped branch leaves params and state untouched, with no select pass.
        params, inner = jax.lax.cond(
            finite, lambda operands: update_then_apply(tx, *operands), lambda operands: (operands[2], operands[1]),
            (grads, state.inner_state, params))
        consecutive = jnp.where(finite, 0, nx.increment(state.consecutive))
        skipped = jnp.where(finite, state.skipped, nx.increment(state.skipped))
        return params, SkipNonfiniteState(inner, skipped, consecutive, state.gave_up | (consecutive >= limit))

    return FusedTransformation(init, update, update_and_apply)


def _guards(state) -> list:
    return [node for node in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, SkipNonfiniteState))
            if isinstance(node, SkipNonfiniteState)]


def raise_if_gave_up(state) -> None:
    """Raise if any :func:`skip_nonfinite` in ``state`` gave up.

    Outside jit this raises ``FloatingPointError``. Inside jit it is a
    ``checkify.check``: wrap the step in ``jax.experimental.checkify.checkify``
    and call ``error.throw()`` on the error it returns.
    """
    guards = _guards(state)
    if not guards:
        raise ValueError("this state holds no skip_nonfinite guard: wrap the optimizer in adaptx.skip_nonfinite")
    message = ("skip_nonfinite gave up: max_consecutive steps in a row had NaN or Inf gradients ({skipped}"
               " skipped in all, {consecutive} in a row now); lower the learning rate or look for an overflow")
    for guard in guards:
        gave_up = concrete(guard.gave_up)
        if gave_up is None:
            checkify.check(~jnp.any(guard.gave_up), message,
                           skipped=jnp.max(guard.skipped), consecutive=jnp.max(guard.consecutive))
        elif gave_up.any():
            raise FloatingPointError(message.format(skipped=np.max(guard.skipped),
                                                    consecutive=np.max(guard.consecutive)))
