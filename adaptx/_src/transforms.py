"""Stateless (or step-counting) transformations: learning rate, scaling, weight decay, clipping, loss scale."""
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.validate import check_range, check_tree_match
from adaptx._src.base import EmptyState, GradientTransformation

Schedule = Callable[[jax.Array], Any]
ScalarOrSchedule = Union[float, jax.Array, Schedule]


class ScheduleState(NamedTuple):
    count: jax.Array


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Multiply by minus the learning rate: u = −η·g, turning a direction into a descent step.

    ``learning_rate`` is a number, a scalar array, or a schedule ``step -> η``
    read at the number of updates applied so far (0 on the first); in an
    adaptx alias the schedule is read by :func:`adaptx.with_hyperparams`.
    """
    if callable(learning_rate):
        def init(params):
            return ScheduleState(jnp.zeros([], jnp.int32))

        def update(updates, state, params=None, **extra_args):
            return _scale(updates, -learning_rate(state.count)), ScheduleState(nx.increment(state.count))

        return GradientTransformation(init, update)

    check_range("learning_rate", learning_rate)
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None, **extra_args: (_scale(updates, -learning_rate), state),
    )


def _scale(updates, factor):
    """c·g per leaf, c negated or cast once per leaf dtype at most (a no-op for matching dtypes)."""
    return jax.tree.map(lambda g: nx.cast(factor, g) * g, updates)


def scale(factor: float) -> GradientTransformation:
    """Multiply by a constant: u = c·g.

    ``scale(-1.0)`` turns a minimiser into a maximiser (torch.optim's
    ``maximize=True``) when placed first in a chain.
    """
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None, **extra_args: (_scale(updates, factor), state),
    )


def scale_by_inverse_time_decay(decay_rate: float, *, count: Optional[jax.Array] = None) -> GradientTransformation:
    """Divide by 1 + κ·(t − 1) at step t (from 1): an inverse-time learning-rate decay.

        u = g / (1 + κ·(t − 1))

    with κ = ``decay_rate``, as torch.optim.Adagrad's ``lr_decay`` (its
    ``clr = lr / (1 + (step − 1)·lr_decay)``). Unlike a schedule given as the
    learning rate, κ is a number the caller can keep as a traced hyperparameter.
    ``count`` as in :func:`adaptx.scale_by_adam`.
    """
    check_range("decay_rate", decay_rate)

    def init(params):
        return nx.block_state(ScheduleState, EmptyState, nx.initial_count(count))

    def update(updates, state, params=None, **extra_args):
        step, own = nx.this_step(count, state)
        elapsed = (step - 1).astype(nx.scalar_dtype())
        divisor = 1 + jnp.asarray(decay_rate, elapsed.dtype) * elapsed
        return jax.tree.map(lambda g: (g / divisor.astype(nx.real_accumulator_dtype(g))).astype(g.dtype),
                            updates), nx.block_state(ScheduleState, EmptyState, own)

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add weight decay: u = g + λ·θ.

    Placed after an adaptive scaling and before the learning rate, λθ is
    scaled by η but not by the adaptive denominator: AdamW's decoupled decay
    (Loshchilov & Hutter, 2019). Placed first, it is an L2 penalty coupled
    into the gradient, as torch.optim's ``weight_decay`` in SGD, Adam, RMSprop, ...
    torch's and keras' roundings of the decoupled step are in ``adaptx.compat``.
    """
    check_range("weight_decay", weight_decay)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")
        return jax.tree.map(lambda g, p: g + nx.cast(weight_decay, g) * p.astype(g.dtype), updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale so the global L2 norm is at most ``max_norm`` (Pascanu et al., 2013).

        u = g · min(1, c / ‖g‖₂),    ‖g‖₂ over every leaf together
    """
    check_range("max_norm", max_norm)

    def update(updates, state, params=None, **extra_args):
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        norm = jnp.sqrt(sum(jnp.sum(nx.abs_sq(g, nx.real_accumulator_dtype(g))) for g in leaves))
        limit = jnp.asarray(max_norm, norm.dtype)
        factor = jnp.where(norm > limit, limit / norm, 1)
        return jax.tree.map(lambda g: (g * factor.astype(g.dtype)), updates), state

    return GradientTransformation(lambda params: EmptyState(), update)


def clip_by_norm(max_norm: float) -> GradientTransformation:
    """Rescale each leaf so its own L2 norm is at most ``max_norm`` (keras' ``clipnorm``).

        u = g·c / max(‖g‖₂, c),    ‖g‖₂ over one leaf

    Written as TensorFlow's ``clip_by_norm`` computes it, so it matches keras
    bit for bit; :func:`clip_by_global_norm` takes one norm over every leaf.
    """
    check_range("max_norm", max_norm)

    def clip(updates, state, params=None, **extra_args):
        wide = jax.tree.map(lambda g: g.astype(nx.accumulator_dtype(g)), updates)
        norms = nx.safe_sqrt(jax.tree.map(lambda g: jnp.sum(nx.abs_sq(g, nx.real_accumulator_dtype(g))), wide))

        def clip_leaf(g, g32, norm):
            limit = nx.cast(max_norm, norm)
            return (g32 * limit / jnp.maximum(norm, limit)).astype(g.dtype)

        return jax.tree.map(clip_leaf, updates, wide, norms), state

    return GradientTransformation(lambda params: EmptyState(), clip)


def clip_by_value(max_value: float) -> GradientTransformation:
    """Clip every coordinate to [−c, c]: u = min(max(g, −c), c), keras' ``clipvalue`` and optax's ``clip``."""
    check_range("max_value", max_value)

    def clip_leaf(g):
        limit = nx.cast(max_value, g)
        return jnp.clip(g, -limit, limit)

    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None, **extra_args: (jax.tree.map(clip_leaf, updates), state),
    )


def unscale_gradients(loss_scale: float) -> GradientTransformation:
    """Divide by a loss scale: u = g / s (keras' ``loss_scale_factor``).

    For gradients of a loss multiplied by s, which keeps small float16
    gradients from flushing to zero (Micikevicius et al., 2018); dividing
    first gives every later block the gradients of the unscaled loss.
    """
    check_range("loss_scale", loss_scale)
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None, **extra_args: (
            jax.tree.map(lambda g: g / nx.cast(loss_scale, g), updates), state
        ),
    )
