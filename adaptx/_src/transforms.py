"""Stateless (or step-counting) transformations: learning rate, scaling, weight decay, clipping, loss scale."""
from typing import Any, Callable, NamedTuple, Union

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

    ``learning_rate`` is a float, an array, or a schedule ``step -> η`` read
    at the number of updates applied so far (0 on the first).
    """
    if callable(learning_rate):
        def init(params):
            return ScheduleState(jnp.zeros([], jnp.int32))

        def update(updates, state, params=None):
            return _scale(updates, learning_rate(state.count)), ScheduleState(nx.increment(state.count))

        return GradientTransformation(init, update)

    check_range("learning_rate", learning_rate)
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None: (_scale(updates, learning_rate), state),
    )


def _scale(updates, learning_rate):
    return jax.tree.map(lambda g: (-nx.as_dtype_of(g, learning_rate) * g), updates)


def scale(factor: float) -> GradientTransformation:
    """Multiply by a constant: u = c·g.

    ``scale(-1.0)`` turns a minimiser into a maximiser (torch.optim's
    ``maximize=True``) when placed first in a chain.
    """
    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda g: nx.as_dtype_of(g, factor) * g, updates), state),
    )


def scale_by_inverse_time_decay(decay_rate: float) -> GradientTransformation:
    """Divide by 1 + κ·(t − 1) at step t (from 1): an inverse-time learning-rate decay.

        u = g / (1 + κ·(t − 1))

    with κ = ``decay_rate``, as torch.optim.Adagrad's ``lr_decay`` (its
    ``clr = lr / (1 + (step − 1)·lr_decay)``). Unlike a schedule given as the
    learning rate, κ is a number the caller can keep as a traced hyperparameter.
    """
    check_range("decay_rate", decay_rate)

    def init(params):
        return ScheduleState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        def rescale(g):
            elapsed = state.count.astype(nx.accumulator_dtype(g))
            return (g / (1 + nx.as_dtype_of(elapsed, decay_rate) * elapsed)).astype(g.dtype)

        return jax.tree.map(rescale, updates), ScheduleState(nx.increment(state.count))

    return GradientTransformation(init, update)


def add_decayed_weights(
    weight_decay: float, *, learning_rate: Any = None, multiplicative: bool = False
) -> GradientTransformation:
    """Add decoupled weight decay: u = g + λ·θ (Loshchilov & Hutter, 2019).

    Placed after an adaptive scaling and before the learning rate, λθ is
    scaled by η but not by the adaptive denominator: AdamW's decoupling.

    With ``learning_rate`` η it adds the whole decay step instead, u = g − θ·λ·η,
    for placing after :func:`scale_by_learning_rate`. This is keras' order: its
    base optimizer shrinks θ by θ·λ·η beside updates whose momentum buffers
    already hold η, which no placement before the learning rate reproduces
    once η follows a schedule. It is rounded as keras' two assignments are,
    u = ((θ − θ·λ·η) + g) − θ: θ + u lands on keras' θ exactly whenever the
    new θ is within a factor 2 of the old (Sterbenz's lemma), and a decay
    under half an ulp of θ is lost in both.

    ``multiplicative`` rounds that decay step as torch.optim's AdamW does
    instead, θ ← fl((1 − ηλ)·θ) in the params' precision before the step is added,

        u = g + (fl((1 − ηλ)·θ) − θ),    so that θ + u rounds as fl(fl((1 − ηλ)·θ) + g)

    (the subtraction is exact); the plain form u = g + ηλθ placed before the
    learning rate drifts from torch by up to ~3e-5 relative in 200 steps.
    Placed first, without ``learning_rate``, the block is an L2 penalty coupled
    into the gradient, as torch.optim's ``weight_decay`` in SGD, Adam, RMSprop, ...
    """
    check_range("weight_decay", weight_decay)
    if learning_rate is not None:
        check_range("learning_rate", learning_rate)

    def decay(g, p):
        if learning_rate is None:
            return g + nx.as_dtype_of(g, weight_decay) * p.astype(g.dtype)
        if multiplicative:
            p = p.astype(nx.accumulator_dtype(p))
            eta, lam = nx.as_dtype_of(p, learning_rate, weight_decay)
            # δ = 1 − fl(1 − ηλ), exact; the barrier stops XLA from folding it back into ηλ.
            # θ − δθ is then fl((1 − ηλ)θ) whether or not the compiler fuses it into an FMA.
            delta = 1 - jax.lax.optimization_barrier(1 - eta * lam)
            return g + ((p - delta * p) - p).astype(g.dtype)
        p = p.astype(g.dtype)
        decayed = p - p * nx.as_dtype_of(g, weight_decay) * nx.as_dtype_of(g, learning_rate)
        return (decayed + g) - p

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")
        return jax.tree.map(decay, updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale so the global L2 norm is at most ``max_norm`` (Pascanu et al., 2013).

        u = g · min(1, c / ‖g‖₂),    ‖g‖₂ over every leaf together
    """
    check_range("max_norm", max_norm)

    def update(updates, state, params=None):
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(nx.accumulator_dtype(g)))) for g in leaves))
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

    def clip_leaf(g):
        g32 = g.astype(nx.accumulator_dtype(g))
        norm = nx.safe_sqrt(jnp.sum(jnp.square(g32)))
        limit = nx.as_dtype_of(norm, max_norm)
        return (g32 * limit / jnp.maximum(norm, limit)).astype(g.dtype)

    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(clip_leaf, updates), state),
    )


def clip_by_value(max_value: float) -> GradientTransformation:
    """Clip every coordinate to [−c, c]: u = min(max(g, −c), c), keras' ``clipvalue`` and optax's ``clip``."""
    check_range("max_value", max_value)

    def clip_leaf(g):
        limit = nx.as_dtype_of(g, max_value)
        return jnp.clip(g, -limit, limit)

    return GradientTransformation(
        lambda params: EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(clip_leaf, updates), state),
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
        lambda updates, state, params=None: (
            jax.tree.map(lambda g: g / nx.as_dtype_of(g, loss_scale), updates), state
        ),
    )
