"""Update and apply in one pass: the fast path of a training step.

``update`` followed by ``apply_updates`` is two steps, and XLA's CPU backend
compiles them into one loop per written array, re-reading what the previous
loop wrote. :func:`update_and_apply` computes the same new params and state,
and for the optimizers that have a one-pass kernel (``adam``, ``adamw``,
``adagrad``, ``rmsprop`` without momentum or centering; float32 or bfloat16
params with float32 moments, on CPU) it runs that kernel instead: every
param, gradient and moment is read once and written once, and every 16
leaves are one operation to trace and compile. :func:`adaptx.flat_state`
cuts the per-leaf cost further by keeping the moments in flat buffers.
"""
import weakref
from typing import Callable

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src import kernels, packing as _packing
from adaptx._src.validate import check_tree_match
from adaptx._src.adam import ScaleByAdamState
from adaptx._src.base import GradientTransformation, apply_updates
from adaptx._src.scaling import AccumulatorState, RmsState

# tx.update -> its one-pass (grads, state, params) -> (params, state)
_FAST: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def register(tx: GradientTransformation, update_and_apply_fn: Callable) -> None:
    """Make ``update_and_apply_fn`` the one-pass step of ``tx`` (see :func:`adaptx.with_hyperparams`)."""
    _FAST[tx.update] = update_and_apply_fn


def lookup(tx: GradientTransformation):
    """The one-pass step registered for ``tx``, or None."""
    return _FAST.get(tx.update)


def update_and_apply(tx: GradientTransformation, grads, state, params):
    """``(apply_updates(params, u), state')`` where ``u, state' = tx.update(grads, state, params)``.

    Uses ``tx``'s one-pass kernel when it has one and the leaves suit it; the
    numbers are those of ``update`` then ``apply_updates`` either way. The
    kernel path is not differentiable: differentiate through ``tx.update``.
    """
    fast = _FAST.get(tx.update)
    if fast is not None:
        return fast(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return apply_updates(params, updates), state


def kernel_takes(params, grads) -> bool:
    """Whether the kernel can step these params: float32/bfloat16 leaves, grads alike, on CPU."""
    if jax.default_backend() != "cpu":
        return False
    flat_p, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    return (len(flat_p) == len(flat_g)
            and all(p.dtype in kernels.LEAF_DTYPES and g.dtype == p.dtype and p.shape == g.shape
                    for p, g in zip(flat_p, flat_g))
            and kernels.available())


def _leaves(params, grads, *moments):
    """How the kernel sees this step, or None when it cannot take it.

    Moments are either trees shaped like the params (one array per leaf) or,
    under :func:`adaptx.flat_state`, one float32 buffer per param dtype.
    """
    same_tree = jax.tree.structure(params) == jax.tree.structure(moments[0]) and all(
        jnp.shape(p) == jnp.shape(m) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(moments[0])))
    if same_tree:
        check_tree_match(grads, moments[0], "optimizer state")
        flat = False
    elif isinstance(moments[0], dict) and set(moments[0]) == set(_packing.layout(params)):
        flat = True
    else:
        return None
    if not (kernel_takes(params, grads) and all(m.dtype == jnp.float32 for m in jax.tree.leaves(moments))):
        return None
    return flat, params, grads, moments


def _run(name, hyper, leaves):
    """Run the kernel; returns the new params and the new moments, each in its layout."""
    flat, params, grads, moments = leaves
    treedef = jax.tree.structure(params)
    flat_p, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    if not flat:
        new_p, new_m = kernels.step(name, hyper, flat_p, flat_g, [jax.tree.leaves(m) for m in moments])
        return treedef.unflatten(new_p), [treedef.unflatten(m) for m in new_m]
    new_p, new_m = list(flat_p), [dict(m) for m in moments]
    for dtype, where in _packing.layout(params).items():
        index, offsets = [i for i, _ in where], [o for _, o in where]
        stepped, buffers = kernels.step(name, hyper, [flat_p[i] for i in index], [flat_g[i] for i in index],
                                        [m[dtype] for m in moments], offsets)
        for i, p in zip(index, stepped):
            new_p[i] = p
        for m, buffer in zip(new_m, buffers):
            m[dtype] = buffer
    return treedef.unflatten(new_p), new_m


def adam_kernel(grads, inner, params, count, *, learning_rate, b1, b2, eps, weight_decay=None):
    """One-pass ``chain(scale_by_adam, [add_decayed_weights,] scale_by_learning_rate)``."""
    adam, *rest = inner
    leaves = _leaves(params, grads, adam.mu, adam.nu)
    if leaves is None:
        return None
    step = nx.increment(count)
    hyper = dict(
        neg_lr=-learning_rate, b1=b1.value, b1c=b1.complement, b2=b2.value, b2c=b2.complement, eps=eps,
        inv_bc1=1 / nx.bias_correction(b1, step), inv_bc2=1 / nx.bias_correction(b2, step),
        decay=0.0 if weight_decay is None else weight_decay, has_decay=float(weight_decay is not None),
    )
    new_params, (mu, nu) = _run("adam", hyper, leaves)
    return new_params, (adam._replace(mu=mu, nu=nu), *rest)


def adagrad_kernel(grads, inner, params, count, *, learning_rate, eps):
    """One-pass ``chain(accumulate_squares, scale_by_learning_rate)``."""
    acc, *rest = inner
    leaves = _leaves(params, grads, acc.nu)
    if leaves is None:
        return None
    new_params, (nu,) = _run("adagrad", dict(neg_lr=-learning_rate, eps=eps), leaves)
    return new_params, (AccumulatorState(nu), *rest)


def rmsprop_kernel(grads, inner, params, count, *, learning_rate, decay, eps):
    """One-pass ``chain(scale_by_rms, identity, scale_by_learning_rate)``."""
    rms, *rest = inner
    leaves = _leaves(params, grads, rms.nu)
    if leaves is None:
        return None
    hyper = dict(neg_lr=-learning_rate, b2=decay.value, b2c=decay.complement, eps=eps)
    new_params, (nu,) = _run("rmsprop", hyper, leaves)
    return new_params, (RmsState(nu, None), *rest)
