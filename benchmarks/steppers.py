"""Runnable steps for each contender, all jitted with donated params and state.

A stepper is a zero-argument callable doing one optimizer step on held
buffers and waiting for it to finish.
"""
import jax
import jax.numpy as jnp
import optax

import adaptx


def adaptx_fused_step(tx):
    """adaptx's default path: :func:`adaptx.update_and_apply` (the one-pass kernel where it applies)."""
    return lambda p, s, g: adaptx.update_and_apply(tx, g, s, p)


def two_step(tx, apply_updates):
    """``tx.update`` then ``apply_updates``: optax's usual step, and adaptx's without the kernel."""
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return apply_updates(p, updates), s

    return step


def donated(step_fn, tx, params, grads, compiled=None):
    """A stepper running ``step_fn`` (or its ``compiled`` executable) on copies of ``params``."""
    run_step = compiled or jax.jit(step_fn, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params), None]
    carry[1] = tx.init(carry[0])

    def run():
        carry[0], carry[1] = run_step(carry[0], carry[1], grads)
        jax.block_until_ready(carry)

    return run


def donated_copy(x):
    """The bandwidth yardstick: x ← 1.0001·x in place, 8 bytes moved per float32."""
    scale = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    buf = [jnp.copy(x)]

    def run():
        buf[0] = scale(buf[0])
        buf[0].block_until_ready()

    return run


TORCH_CLASSES = {"adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop"}


def torch_step(name, sizes, lr):
    """torch.optim's fastest CPU implementation of ``name``: fused if it has one, else foreach.

    Returns ``(stepper, implementation)`` or ``(None, reason)`` without torch.
    """
    try:
        import torch
    except ImportError as error:
        return None, f"torch unavailable: {error}"
    params = []
    for i, size in enumerate(sizes):
        p = torch.randn(size, generator=torch.Generator().manual_seed(i), requires_grad=True)
        p.grad = torch.randn(size, generator=torch.Generator().manual_seed(i + 1))
        params.append(p)
    cls = getattr(torch.optim, TORCH_CLASSES[name])
    try:
        opt, how = cls(params, lr=lr, fused=True), "fused"
        opt.step()
    except (RuntimeError, TypeError):
        opt, how = cls(params, lr=lr, foreach=True), "foreach"
    return opt.step, f"torch {torch.__version__} {cls.__name__}({how}=True)"


def optax_tx(name, lr):
    return {"adam": optax.adam(lr), "adagrad": optax.adagrad(lr), "rmsprop": optax.rmsprop(lr)}[name]


def adaptx_tx(name, lr):
    return {"adam": adaptx.adam(lr), "adagrad": adaptx.adagrad(lr), "rmsprop": adaptx.rmsprop(lr)}[name]
