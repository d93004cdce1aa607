"""A jitted training step that donates params and optimizer state: the fast path by default."""
import contextlib
from typing import Any, Callable

import jax

from adaptx._src import kernels
from adaptx._src.base import GradientTransformation, one_pass
from adaptx._src.fused import explain, recording_declines, update_and_apply


def make_train_step(
    loss_fn: Callable[..., Any], tx: GradientTransformation, *, donate: bool = True, has_aux: bool = False,
    require_kernel: bool = False,
) -> Callable:
    """Return ``step(params, state, batch) -> (params, state, loss)``, jitted.

    The step takes ``loss_fn(params, batch)``'s gradient and applies ``tx``
    with :func:`adaptx.update_and_apply` (one pass over memory where ``tx`` has
    a kernel). With ``donate`` (the default) the params and state passed in are
    donated: XLA writes the new ones into their buffers instead of allocating
    fresh ones (a step without donation takes several times longer on CPU),
    and the arrays passed in are deleted, so keep only what the step returns.
    With ``has_aux``, ``loss_fn`` returns ``(loss, aux)`` and so does the step
    in place of ``loss``.

    Where the kernel cannot run, the step falls back to ``update`` then
    ``apply_updates`` silently (:func:`adaptx.kernels.explain` says why);
    with ``require_kernel`` it raises ValueError naming the reason instead.
    """
    if require_kernel and one_pass(tx) is None:
        raise ValueError("require_kernel: " + explain(tx, None))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def step(params, state, batch):
        loss, grads = grad_fn(params, batch)
        value = loss[0] if has_aux else loss
        # The kernel waits for the loss, which reads the params it overwrites: no copies (kernels.ordered_after).
        with kernels.ordered_after(value), (recording_declines(raise_on_decline=True) if require_kernel
                                           else contextlib.nullcontext()):
            params, state = update_and_apply(tx, grads, state, params)
        return params, state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())
