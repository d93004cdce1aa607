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
import contextlib
import contextvars
from typing import Optional

import jax
import jax.numpy as jnp

from adaptx._src import kernels, numerics as nx, packing
from adaptx._src.base import GradientTransformation, one_pass, update_then_apply
from adaptx._src.validate import check_tree_match, path_name


def update_and_apply(tx: GradientTransformation, grads, state, params):
    """``(apply_updates(params, u), state')`` where ``u, state' = tx.update(grads, state, params)``.

    Runs the one-pass step ``tx`` carries (:class:`adaptx.FusedTransformation`:
    every adaptx optimizer with a kernel, and :func:`adaptx.chain` and the
    wrappers around one) when it has one and the leaves suit the kernel; the
    numbers are those of ``update`` then ``apply_updates`` either way. The
    kernel path is not differentiable: differentiate through ``tx.update``.

    Donate ``params`` and ``state`` in the jitted step that calls this
    (``jax.jit(step, donate_argnums=...)``, as :func:`adaptx.make_train_step`
    does): the kernel writes in place, and without donation XLA must copy the
    inputs first, which makes the step slower than ``update`` plus
    ``apply_updates``.
    """
    return update_then_apply(tx, grads, state, params)


# While set, a kernel that declines raises (make_train_step(require_kernel=True)) or records why.
_declined: contextvars.ContextVar = contextvars.ContextVar("adaptx_kernel_declined", default=None)


@contextlib.contextmanager
def recording_declines(raise_on_decline: bool = False):
    """Collect (or, with ``raise_on_decline``, raise) the reasons kernels decline while tracing."""
    reasons: list = []
    token = _declined.set((reasons, raise_on_decline))
    try:
        yield reasons
    finally:
        _declined.reset(token)


def _decline(reason: str) -> None:
    recording = _declined.get()
    if recording is not None:
        reasons, must_raise = recording
        if must_raise:
            raise ValueError(f"the one-pass kernel cannot run: {reason}")
        reasons.append(reason)


def explain(tx: GradientTransformation, params, grads=None) -> str:
    """Why ``adaptx.update_and_apply(tx, grads, tx.init(params), params)`` does or does not run the kernel.

    Traces the step abstractly (nothing is computed) and reports each
    kernel's verdict: "runs the one-pass kernel" or the reasons it falls back.
    """
    if one_pass(tx) is None:
        return ("no one-pass step: this transformation carries none (adaptx optimizers with a kernel"
                " do, and chain and adaptx's wrappers keep it when their last member has one)")
    grads = params if grads is None else grads
    with recording_declines() as reasons:
        jax.eval_shape(lambda g, p: update_and_apply(tx, g, tx.init(p), p), grads, params)
    if not reasons:
        return "runs the one-pass kernel"
    return "falls back to update then apply_updates: " + "; ".join(dict.fromkeys(reasons))


def kernel_refusal(params, grads) -> Optional[str]:
    """Why the kernel cannot step these params and grads, or None when it can.

    Checks everything the kernel trusts: float32/bfloat16 params, grads of the
    same tree, shape and dtype, and a CPU backend with the kernel built.
    """
    if jax.default_backend() != "cpu":
        return f"the kernel runs on CPU only (default backend: {jax.default_backend()})"
    if not kernels.available():
        return f"the kernel is unavailable: {kernels.unavailable_reason()}"
    check_tree_match(grads, params, "params", subject="gradients")
    for (path, p), g in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads)):
        if jnp.dtype(p.dtype) not in kernels.LEAF_DTYPES:
            return f"params at {path_name(path)} are {jnp.dtype(p.dtype).name}; the kernel takes float32 and bfloat16"
        if jnp.dtype(g.dtype) != jnp.dtype(p.dtype):
            return f"gradients at {path_name(path)} are {jnp.dtype(g.dtype).name} but the params are {jnp.dtype(p.dtype).name}"
    return None


def _check_moments(params, moments) -> str:
    """The moments' layout, "leaves" or "flat", after checking every size the kernel will trust.

    Per-leaf moments must match the params leaf for leaf (tree, shape,
    float32); flat ones (:func:`adaptx.flat_state`) must be one float32 buffer
    per param dtype holding exactly that dtype's elements. A mismatch raises
    ValueError naming the path: the kernel would otherwise read or write past
    a buffer.
    """
    first = moments[0]
    if isinstance(first, dict) and set(first) == set(packing.layout(params)) and jax.tree.structure(
            first) != jax.tree.structure(params):
        sizes = packing.sizes(params)
        for moment in moments:
            for name, buffer in moment.items():
                if jnp.shape(buffer) != (sizes[name],) or jnp.dtype(buffer.dtype) != jnp.float32:
                    raise ValueError(
                        f"the flat moment buffer for {name} params has shape {jnp.shape(buffer)} and dtype"
                        f" {jnp.dtype(buffer.dtype).name}, but the params hold {sizes[name]} {name} elements:"
                        " pass the state flat_state(tx).init made for these params")
        return "flat"
    for moment in moments:
        check_tree_match(moment, params, "params", subject="optimizer moments",
                         advice="pass the state this optimizer's init made for these params")
        for (path, m) in jax.tree_util.tree_flatten_with_path(moment)[0]:
            if jnp.dtype(m.dtype) != jnp.float32:
                raise ValueError(f"the moment at {path_name(path)} is {jnp.dtype(m.dtype).name}; the kernel keeps"
                                 " float32 moments (pass mu_dtype/nu_dtype=None)")
    return "leaves"


def _kernel_or_none(params, grads, moments):
    """``(layout, params, grads, moments)`` for the kernel, or None (and the reason recorded)."""
    reason = kernel_refusal(params, grads)
    quantized = [n for n in jax.tree.leaves(moments, is_leaf=nx.quantize_module.is_quantized)
                 if nx.quantize_module.is_quantized(n)]
    if reason is None and quantized:
        reason = ("the moments are quantized (adaptx.Quantized): only Adam's kernel reads them; this one"
                  " keeps float32 moments, so the step dequantizes, updates and requantizes on the plain path")
    if reason is None and any(jnp.dtype(m.dtype) != jnp.float32 for m in jax.tree.leaves(moments)):
        reason = "the moments are not float32 (mu_dtype/nu_dtype were set)"
    if reason is not None:
        _decline(reason)
        return None
    return _check_moments(params, moments), params, grads, moments


def _run(name, hyper, leaves, groups=None):
    """Run the kernel; returns the new params and the new moments, each in its layout.

    ``groups`` optionally splits the leaves into runs with their own extra
    hyperparameters: [(leaf indices, {slot: value})].
    """
    layout, params, grads, moments = leaves
    treedef = jax.tree.structure(params)
    flat_p, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    groups = groups or [(list(range(len(flat_p))), {})]
    if layout == "leaves":
        flat_m = [jax.tree.leaves(m) for m in moments]
        new_p, new_m = list(flat_p), [list(m) for m in flat_m]
        for index, extra in groups:
            if not index:
                continue
            stepped, ms = kernels.step(name, {**hyper, **extra}, [flat_p[i] for i in index],
                                       [flat_g[i] for i in index], [[m[i] for i in index] for m in flat_m])
            for k, i in enumerate(index):
                new_p[i] = stepped[k]
                for m, out in zip(new_m, ms):
                    m[i] = out[k]
        return treedef.unflatten(new_p), [treedef.unflatten(m) for m in new_m]
    new_p, new_m = list(flat_p), [dict(m) for m in moments]
    for dtype, where in packing.layout(params).items():
        offsets = dict(where)
        for index, extra in groups:
            index = [i for i in index if i in offsets]
            if not index:
                continue
            stepped, buffers = kernels.step(name, {**hyper, **extra}, [flat_p[i] for i in index],
                                            [flat_g[i] for i in index], [m[dtype] for m in new_m],
                                            [offsets[i] for i in index])
            for i, p in zip(index, stepped):
                new_p[i] = p
            for m, buffer in zip(new_m, buffers):
                m[dtype] = buffer
    return treedef.unflatten(new_p), new_m


def _quantized_leaves(tree) -> list:
    is_quantized = nx.quantize_module.is_quantized
    return [n for n in jax.tree.leaves(tree, is_leaf=is_quantized) if is_quantized(n)]


def _adam_hyper(learning_rate, b1, b2, eps, weight_decay, count) -> dict:
    step = nx.increment(count)
    return dict(
        neg_lr=-learning_rate, b1=b1.value, b1c=b1.complement, b2=b2.value, b2c=b2.complement, eps=eps,
        inv_bc1=1 / nx.bias_correction(b1, step), inv_bc2=1 / nx.bias_correction(b2, step),
        decay=0.0 if weight_decay is None else weight_decay, has_decay=float(weight_decay is not None),
    )


def _quantized_adam(grads, inner, params, count, *, learning_rate, b1, b2, eps, weight_decay, decay_mask):
    """Adam's one-pass step where some moments are quantized (adaptx.Quantized).

    A leaf with both moments quantized takes the quantized kernel (dequantize, step and
    requantize per block, in one pass); the float32 ones (small leaves) the float32
    kernel, all in one call as usual. A leaf with one moment quantized and one not, or a
    step over several devices (a block may not be split across shards by the kernel),
    falls back to the plain path, with the reason recorded.
    """
    adam, *rest = inner
    is_quantized = nx.quantize_module.is_quantized
    reason = kernel_refusal(params, grads)
    if reason is None and jax.device_count() > 1:
        reason = ("the moments are quantized (adaptx.Quantized) and there are several devices: the quantized"
                  " kernel steps unsharded leaves only")
    treedef = jax.tree.structure(params)
    flat_p, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    flat_mu, flat_nu = [], []
    if reason is None:
        try:  # a QuantizedArray is one leaf of the params' tree (its two arrays below it)
            flat_mu, flat_nu = treedef.flatten_up_to(adam.mu), treedef.flatten_up_to(adam.nu)
        except (ValueError, TypeError) as error:
            raise ValueError(f"the optimizer moments do not match the params' tree ({error}): pass the state"
                             " this optimizer's init made for these params") from None
    plain, quantized = [], []
    for i, (p, m, v) in enumerate(zip(flat_p, flat_mu, flat_nu)):
        if is_quantized(m) and is_quantized(v):
            if m.block_size != v.block_size or m.shape != tuple(jnp.shape(p)):
                reason = f"the quantized moments of leaf {i} differ in block size or shape from its param"
            elif m.grid or v.grid:
                reason = (f"the quantized moments of leaf {i} are blocked per shard (made for a sharded"
                          " param); the kernel reads blocks of the whole leaf")
            quantized.append(i)
        elif is_quantized(m) or is_quantized(v):
            reason = ("one moment is quantized and the other is not (set both mu_dtype and nu_dtype to"
                      " adaptx.Quantized for the quantized kernel)")
        else:
            plain.append(i)
    if reason is not None:
        _decline(reason)
        return None
    hyper = _adam_hyper(learning_rate, b1, b2, eps, weight_decay, count)
    flags = decay_mask(params) if weight_decay is not None and decay_mask is not None else [True] * len(flat_p)
    no_decay = dict(decay=0.0, has_decay=0.0)
    new_p, new_mu, new_nu = list(flat_p), list(flat_mu), list(flat_nu)
    for i in quantized:
        new_p[i], new_mu[i], new_nu[i] = kernels.quantized_adam_step(
            hyper if flags[i] else {**hyper, **no_decay}, flat_p[i], flat_g[i], flat_mu[i], flat_nu[i])
    if plain:
        leaves = _kernel_or_none([flat_p[i] for i in plain], [flat_g[i] for i in plain],
                                 ([flat_mu[i] for i in plain], [flat_nu[i] for i in plain]))
        if leaves is None:
            return None
        groups = [([k for k, i in enumerate(plain) if flags[i]], {}),
                  ([k for k, i in enumerate(plain) if not flags[i]], no_decay)]
        stepped, (mu, nu) = _run("adam", hyper, leaves, groups)
        for k, i in enumerate(plain):
            new_p[i], new_mu[i], new_nu[i] = stepped[k], mu[k], nu[k]
    unflatten = treedef.unflatten
    return unflatten(new_p), (adam._replace(mu=unflatten(new_mu), nu=unflatten(new_nu)), *rest)


def adam_kernel(grads, inner, params, count, *, learning_rate, b1, b2, eps, weight_decay=None, decay_mask=None):
    """One-pass ``chain(scale_by_adam, [add_decayed_weights,] scale_by_learning_rate)``.

    ``decay_mask(params)``, when given, is one bool per param leaf: the leaves
    the decay applies to (``adamw(mask=...)``); the others step as plain Adam.
    """
    adam, *rest = inner
    if _quantized_leaves(adam.mu) or _quantized_leaves(adam.nu):
        return _quantized_adam(grads, inner, params, count, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                               weight_decay=weight_decay, decay_mask=decay_mask)
    leaves = _kernel_or_none(params, grads, (adam.mu, adam.nu))
    if leaves is None:
        return None
    hyper = _adam_hyper(learning_rate, b1, b2, eps, weight_decay, count)
    groups = None
    if weight_decay is not None and decay_mask is not None:
        flags = decay_mask(params)
        groups = [([i for i, f in enumerate(flags) if f], {}),
                  ([i for i, f in enumerate(flags) if not f], dict(decay=0.0, has_decay=0.0))]
    new_params, (mu, nu) = _run("adam", hyper, leaves, groups)
    return new_params, (adam._replace(mu=mu, nu=nu), *rest)


def adagrad_kernel(grads, inner, params, count, *, learning_rate, eps):
    """One-pass ``chain(accumulate_squares, scale_by_learning_rate)``."""
    acc, *rest = inner
    leaves = _kernel_or_none(params, grads, (acc.nu,))
    if leaves is None:
        return None
    new_params, (nu,) = _run("adagrad", dict(neg_lr=-learning_rate, eps=eps), leaves)
    return new_params, (acc._replace(nu=nu), *rest)


def rmsprop_kernel(grads, inner, params, count, *, learning_rate, decay, eps):
    """One-pass ``chain(scale_by_rms, identity, scale_by_learning_rate)``."""
    rms, *rest = inner
    leaves = _kernel_or_none(params, grads, (rms.nu,))
    if leaves is None:
        return None
    hyper = dict(neg_lr=-learning_rate, b2=decay.value, b2c=decay.complement, eps=eps)
    new_params, (nu,) = _run("rmsprop", hyper, leaves)
    return new_params, (rms._replace(nu=nu), *rest)
