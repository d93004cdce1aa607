"""Optimizer state held in one flat buffer per dtype: fast steps on pytrees of many leaves."""
import jax
import jax.numpy as jnp

from adaptx._src.base import FusedTransformation, GradientTransformation, apply_updates, one_pass
from adaptx._src.fused import kernel_refusal
from adaptx._src.packing import layout, pack, sizes, unpack


def _is_flat(node, params) -> bool:
    """Whether ``node`` is a packed moment of ``params``: one 1-D buffer per param dtype, of its size."""
    if not isinstance(node, dict) or set(node) != set(layout(params)):
        return False
    expected = sizes(params)
    return all(jnp.shape(buffer) == (expected[name],) for name, buffer in node.items())


def _is_like(node, params) -> bool:
    """Whether ``node`` has ``params``' tree and leaf shapes: a moment kept leaf by leaf."""
    try:
        same = jax.tree.structure(node) == jax.tree.structure(params)
    except TypeError:
        return False
    return same and all(jnp.shape(a) == jnp.shape(b) for a, b in zip(jax.tree.leaves(node), jax.tree.leaves(params)))


def pack_state(state, params):
    """``state`` with every moment shaped like ``params`` packed into flat buffers."""
    return jax.tree.map(lambda n: pack(n, params) if _is_like(n, params) else n, state,
                        is_leaf=lambda n: _is_like(n, params))


def unpack_state(state, params):
    """The inverse of :func:`pack_state`."""
    return jax.tree.map(lambda n: unpack(n, params) if _is_flat(n, params) else n, state,
                        is_leaf=lambda n: _is_flat(n, params))


def _refuse_sharded(params) -> None:
    """flat_state concatenates leaves, which cannot keep a sharded param's layout: say so up front."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = getattr(leaf, "sharding", None) if not isinstance(leaf, jax.core.Tracer) else None
        if sharding is None:
            typed = jax.typeof(leaf).sharding if isinstance(leaf, jax.core.Tracer) else None
            sharded = typed is not None and any(axis is not None for axis in typed.spec)
        else:
            sharded = isinstance(sharding, jax.sharding.Sharding) and not sharding.is_fully_replicated
        if sharded:
            raise ValueError(
                f"flat_state cannot hold sharded params (the leaf at {jax.tree_util.keystr(path) or 'the root'}"
                " is sharded): its buffers concatenate every leaf, which would gather them onto each device."
                " Use the optimizer without flat_state: its one-pass kernel runs shard by shard")


def flat_state(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` with its moments in one flat buffer per param dtype instead of one array per leaf.

    A jitted step passes every array of the state in and out, and on a tree
    of 1000 leaves that costs more than the arithmetic. Here each moment is a
    few buffers, and :func:`adaptx.update_and_apply` (so
    :func:`adaptx.make_train_step`) runs ``tx``'s one-pass kernel on each
    param leaf against its slice of them, with the same numbers as ``tx``.
    ``update`` cuts the buffers back into leaves, runs ``tx.update`` on the
    params' own tree (so masks and groups see the real leaves) and packs them
    again, which is slower than ``tx``'s own: use this wrapper with
    ``update_and_apply``. Parts of the state not shaped like the params (e.g. a
    masked group's) stay as they are. :func:`adaptx.hyperparams` and
    :func:`adaptx.set_hyperparams` work on its state as on ``tx``'s.
    """
    def init(params):
        _refuse_sharded(params)
        return pack_state(tx.init(params), params)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("flat_state needs params to unpack its buffers: call update(grads, state, params)")
        updates, state = tx.update(updates, unpack_state(state, params), params, **extra_args)
        return updates, pack_state(state, params)

    inner = one_pass(tx)
    if inner is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        if kernel_refusal(params, grads) is None:
            return inner(grads, state, params)  # the kernel reads the leaves' slices of the buffers
        updates, state = update(grads, state, params)
        return apply_updates(params, updates), state

    return FusedTransformation(init, update, update_and_apply)
