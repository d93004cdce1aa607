"""Stateless (or step-counting) transformations: learning rate, weight decay, clipping."""
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from adaptx import _numerics as nx
from adaptx._validate import check_range, check_tree_match
from adaptx.base import EmptyState, GradientTransformation

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


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add decoupled weight decay: u = g + λ·θ (Loshchilov & Hutter, 2019).

    Placed after an adaptive scaling and before the learning rate, λθ is
    scaled by η but not by the adaptive denominator: AdamW's decoupling.
    """
    check_range("weight_decay", weight_decay)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        check_tree_match(updates, params, "params")
        out = jax.tree.map(
            lambda g, p: (g + nx.as_dtype_of(g, weight_decay) * p.astype(g.dtype)), updates, params
        )
        return out, state

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
