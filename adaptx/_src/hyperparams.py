"""Hyperparameters as traced optimizer state: change them without recompiling, sweep them with vmap.

One rule decides where a hyperparameter lives:

- a Python or NumPy number becomes state: :func:`set_hyperparams`,
  ``optax.tree_utils.tree_set`` and assignment change it, a jitted step never
  retraces, ``jax.vmap`` over states sweeps it;
- a schedule ``count -> value`` is read at the state's count on every update;
- a ``jax.Array`` (or tracer) is the caller's: it is used as given at every
  update and not copied into the state. This is what
  ``optax.inject_hyperparams(adaptx.adam)`` relies on: it calls the factory
  afresh with its own arrays at every update, and those are the numbers used.

So no tool can edit a copy that the update does not read.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptx._src import numerics as nx
from adaptx._src.base import FusedTransformation, GradientTransformation, apply_updates
from adaptx._src.validate import RANGE_OF, check_range, check_scalar


class HyperparamsState(NamedTuple):
    count: jax.Array  # updates applied so far: schedules and bias corrections read it
    hyperparams: dict  # name -> scalar array; set_hyperparams, tree_set or assignment change it
    inner_state: Any


def _storable(value) -> bool:
    return not isinstance(value, (jax.Array, jax.core.Tracer)) and not callable(value)


def _stored_array(value) -> jax.Array:
    """A strongly typed float array in the scalar dtype: a weak type would retrace after a set."""
    return jnp.asarray(np.asarray(value, np.float64), nx.scalar_dtype())


def _rate(stored, built) -> nx.Rate:
    """(β, 1 − β) for a rate read from the state.

    While the state still holds the value the optimizer was built with, 1 − β
    is that value's complement rounded once from double; once it was changed
    (set_hyperparams, tree_set, assignment: all alike) it is 1 − β of the
    stored float32 β, which is exact for β ≥ ½ (Sterbenz). Either way the
    numbers are those of an optimizer built with the stored value.
    """
    built_value = np.asarray(built, np.float64)
    exact = jnp.asarray(1.0 - built_value, stored.dtype)
    return nx.Rate(stored, jnp.where(stored == jnp.asarray(built_value, stored.dtype), exact, 1 - stored))


def with_hyperparams(
    build: Callable[..., GradientTransformation], /, *, rates=(), fused=None, **values
) -> GradientTransformation:
    """``build(count, **values)`` with the numeric ``values`` held in the state.

    ``build`` receives ``count``, the number of updates applied before this
    one (blocks that need the step, like :func:`adaptx.scale_by_adam`, take it
    instead of counting themselves, so the state has one count), and every
    hyperparameter by name: stored ones as scalar arrays, schedules evaluated
    at ``count``, the caller's arrays as given. The names in ``rates`` are
    decay rates β, which ``build`` gets as :class:`adaptx.Rate` (β, 1 − β)
    pairs. ``build`` runs once here, so bad concrete values raise at construction.

    ``fused(grads, inner_state, params, count, **arguments) -> (params,
    inner_state)`` or None, when given, is a one-pass equivalent of ``update``
    plus :func:`adaptx.apply_updates` that :func:`adaptx.update_and_apply` runs.
    """
    unknown = set(rates) - set(values)
    if unknown:
        raise ValueError(f"rates {sorted(unknown)} are not among the hyperparameters {sorted(values)}")
    for name, value in values.items():
        if not callable(value):
            check_scalar(name, value)
    stored = {k: v for k, v in values.items() if _storable(v)}

    def arguments(count, hyperparams) -> dict:
        out = {}
        for name, value in values.items():
            if name in stored:
                value = hyperparams[name]
                if name in rates:
                    value = _rate(value, stored[name]) if isinstance(value, jax.Array) else nx.split_rate(value)
            else:
                if callable(value):
                    value = value(count)
                    check_scalar(f"the schedule for {name} (at this step)", value)
                value = nx.split_rate(value) if name in rates else value
            out[name] = value
        return out

    zero = jnp.zeros([], jnp.int32)
    build(zero, **arguments(zero, stored))  # the blocks check the values as given

    def init(params):
        nx.check_inexact(params, "params")
        count = jnp.zeros([], jnp.int32)  # a fresh array per state: a donated step deletes it
        hyperparams = {k: _stored_array(v) for k, v in stored.items()}
        return HyperparamsState(count, hyperparams, build(count, **arguments(count, hyperparams)).init(params))

    def run(state, inner_step):
        if not isinstance(state, HyperparamsState) or set(state.hyperparams) != set(stored):
            raise ValueError(
                f"this optimizer keeps hyperparameters {sorted(stored)} in its state, but was given"
                f" {_describe(state)}: was it made by another optimizer? Pass the state this one's init made"
            )
        result, inner = inner_step(arguments(state.count, state.hyperparams), state.inner_state)
        return result, state._replace(count=nx.increment(state.count), inner_state=inner)

    def update(updates, state, params=None, **extra_args):
        nx.check_inexact(updates, "updates")
        return run(state, lambda args, inner: build(state.count, **args).update(updates, inner, params, **extra_args))

    if fused is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        def inner_step(args, inner):
            done = fused(grads, inner, params, state.count, **args)
            if done is not None:
                return done
            updates, inner = build(state.count, **args).update(grads, inner, params)
            return apply_updates(params, updates), inner

        nx.check_inexact(grads, "updates")
        return run(state, inner_step)

    return FusedTransformation(init, update, update_and_apply)


def _describe(state) -> str:
    if isinstance(state, HyperparamsState):
        return f"a state with hyperparameters {sorted(state.hyperparams)}"
    return f"a {type(state).__name__}"


def _find(state, kind: type = HyperparamsState) -> list:
    """The ``kind`` nodes (HyperparamsState unless told) in ``state``, outermost first."""
    found = []

    def visit(node):
        if isinstance(node, kind):
            found.append(node)
            return True
        return False

    jax.tree.map(lambda _: None, state, is_leaf=visit)
    return found


def _the_one(state) -> HyperparamsState:
    found = _find(state)
    if len(found) != 1:
        raise ValueError(
            f"found {len(found)} optimizers with hyperparameters in this state; pass the"
            " state of one optimizer (e.g. the element of a chain's tuple that holds it, or"
            " state.inner_states[label] of an adaptx.partition)"
            if found else
            "this state holds no hyperparameters: build the optimizer with an adaptx alias"
            " (adaptx.adam, ...) or wrap it in adaptx.with_hyperparams"
        )
    return found[0]


def hyperparams(state) -> dict:
    """The hyperparameters an optimizer's state holds, by argument name.

    Schedules and the caller's arrays are not in the state, so not here.
    """
    return dict(_the_one(state).hyperparams)


def set_hyperparams(state, **values):
    """Return ``state`` with the named hyperparameters replaced.

    Values are cast to the stored dtype and must be scalars (to give each
    member of a sweep its own value, call this inside ``jax.vmap``). Concrete
    values are range-checked; traced ones are accepted as they are. The state
    then steps exactly like an optimizer built with the stored (float32) value;
    ``optax.tree_utils.tree_set`` gives the same numbers.
    """
    target = _the_one(state)
    new = dict(target.hyperparams)
    for name, value in values.items():
        if name not in new:
            raise ValueError(
                f"this optimizer's state holds no hyperparameter {name!r}; it holds {sorted(new)}."
                " Schedules and hyperparameters given as jax arrays are not state: build the"
                f" optimizer with a number for {name} to make it settable"
                + (" (a momentum of 0 at construction builds no momentum buffer: pass"
                   " momentum > 0)" if name == "momentum" else "")
            )
        check_range(name, value, RANGE_OF.get(name)) if name in RANGE_OF else check_scalar(name, value)
        # A copy of a concrete array: the state must never hold the caller's own buffer,
        # which a donated step would delete.
        new[name] = jnp.asarray(value, new[name].dtype) if isinstance(value, jax.core.Tracer) else jnp.array(
            value, new[name].dtype)
    replaced = target._replace(hyperparams=new)
    return jax.tree.map(lambda node: replaced if node is target else node, state, is_leaf=lambda node: node is target)
