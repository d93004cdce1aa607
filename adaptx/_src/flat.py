"""Optimizer state held in one flat buffer per dtype: fast steps on pytrees of many leaves."""
import jax
import jax.numpy as jnp

from adaptx._src import fused
from adaptx._src.packing import pack, unpack
from adaptx._src.base import GradientTransformation, apply_updates


def flat_state(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` with its state over one flat buffer per param dtype instead of one array per leaf.

    A jitted step passes every array of the state in and out, and on a tree
    of 1000 leaves that costs more than the arithmetic. Here the moments are
    a few buffers, and :func:`adaptx.update_and_apply` (so
    :func:`adaptx.make_train_step`) runs ``tx``'s one-pass kernel on each
    param leaf against its slice of them, with the same numbers as ``tx``.
    ``update`` itself concatenates the gradients and cuts the updates back
    into leaves, which is slower than ``tx``'s own: use this wrapper with
    ``update_and_apply``. :func:`adaptx.hyperparams` and
    :func:`adaptx.set_hyperparams` work on its state as on ``tx``'s.
    """
    def init(params):
        return tx.init(pack(params))

    def update(updates, state, params=None, **extra_args):
        flat_updates, state = tx.update(pack(updates), state, None if params is None else pack(params), **extra_args)
        return unpack(flat_updates, updates), state

    wrapped = GradientTransformation(init, update)
    inner = fused.lookup(tx)
    if inner is not None:
        def update_and_apply(grads, state, params):
            moments_fit = all(x.dtype == jnp.float32 for x in jax.tree.leaves(state) if jnp.ndim(x) == 1)
            if moments_fit and fused.kernel_takes(params, grads):
                return inner(grads, state, params)  # the kernel reads the leaves' slices of the buffers
            updates, state = update(grads, state, params)
            return apply_updates(params, updates), state

        fused.register(wrapped, update_and_apply)
    return wrapped
