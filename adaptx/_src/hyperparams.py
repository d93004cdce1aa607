"""Hyperparameters as traced optimizer state: change them without recompiling, sweep them with vmap."""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaptx._src import numerics as nx
from adaptx._src.validate import RANGES, check_range, concrete
from adaptx._src.base import GradientTransformation, apply_updates
from adaptx._src.fused import register


# Decay rates whose complement 1 − β is kept beside them (see adaptx._numerics.Rate).
RATES = ("decay", "b1", "b2", "rho", "dampening", "alpha", "beta1", "beta2", "beta_1", "beta_2")


class HyperparamsState(NamedTuple):
    count: jax.Array  # updates applied so far: the step schedules are read at
    hyperparams: dict  # name -> array, settable with set_hyperparams
    complements: dict  # rate name -> 1 − rate, rounded from double when it was concrete
    scheduled: dict  # name -> this step's value of a schedule, read-only
    inner_state: Any


def _complement(value, dtype) -> jax.Array:
    """1 − value in ``dtype``, computed in double precision when ``value`` is concrete."""
    array = concrete(value)
    if array is None:
        return (1 - jnp.asarray(value, dtype)).astype(dtype)
    return jnp.asarray(1.0 - array.astype(np.float64), dtype)


def _arguments(hyperparams, complements, scheduled) -> dict:
    """What ``build`` receives: rates as (β, 1 − β) pairs, the rest as arrays."""
    args = {k: nx.Rate(v, complements[k]) if k in complements else v for k, v in hyperparams.items()}
    args.update({k: nx.split_rate(v) if k in RATES else v for k, v in scheduled.items()})
    return args


def with_hyperparams(
    build: Callable[..., GradientTransformation], /, *, fused: Optional[Callable] = None, **values
) -> GradientTransformation:
    """Run ``build(**values)`` with every hyperparameter read from the state.

    Numbers and arrays in ``values`` are stored in the state as arrays (float32,
    or float64 under ``jax_enable_x64``); callables are schedules ``step -> value``
    evaluated at the state's step count. ``build`` is called afresh on every
    update with those arrays, so a jitted step compiled once keeps working after
    :func:`set_hyperparams`, and ``jax.vmap`` over states sweeps them. Calling
    ``build`` once here validates the concrete values immediately.

    ``fused(grads, inner_state, params, **arguments) -> (params, inner_state)``,
    when given, is a one-pass equivalent of ``build(**arguments).update`` plus
    :func:`adaptx.apply_updates` that :func:`adaptx.update_and_apply` runs; it
    returns None for leaves it cannot take, and the two steps run instead.
    """
    schedules = {k: v for k, v in values.items() if callable(v)}
    constants = {k: v for k, v in values.items() if not callable(v)}
    for name, value in constants.items():
        if value is None or isinstance(value, bool):
            raise TypeError(f"with_hyperparams takes numbers, arrays or schedules; {name}={value!r}")
    build(**constants, **{k: s(jnp.zeros([], jnp.int32)) for k, s in schedules.items()})

    def store(values):
        hyperparams = {k: _as_float_array(v) for k, v in values.items()}
        complements = {k: _complement(values[k], v.dtype) for k, v in hyperparams.items() if k in RATES}
        return hyperparams, complements

    def evaluate(count):
        return {k: jnp.asarray(s(count)) for k, s in schedules.items()}

    def init(params):
        count = jnp.zeros([], jnp.int32)
        hyperparams, complements = store(constants)
        scheduled = evaluate(count)
        inner = build(**_arguments(hyperparams, complements, scheduled)).init(params)
        return HyperparamsState(count, hyperparams, complements, scheduled, inner)

    def run(state, inner_step):
        """``inner_step(arguments, inner_state) -> (result, inner_state)`` under the stored hyperparameters."""
        if not isinstance(state, HyperparamsState):
            raise TypeError(f"expected a HyperparamsState, got {type(state).__name__}: was the state made by another optimizer?")
        missing = set(values) - set(state.hyperparams) - set(state.scheduled)
        if missing:
            raise ValueError(f"the state lacks hyperparameters {sorted(missing)}: it was made by another optimizer")
        scheduled = evaluate(state.count)
        result, inner = inner_step(_arguments(state.hyperparams, state.complements, scheduled), state.inner_state)
        return result, state._replace(count=nx.increment(state.count), scheduled=scheduled, inner_state=inner)

    def update(updates, state, params=None):
        return run(state, lambda args, inner: build(**args).update(updates, inner, params))

    def update_and_apply(grads, state, params):
        def inner_step(args, inner):
            done = fused(grads, inner, params, **args)
            if done is not None:
                return done
            updates, inner = build(**args).update(grads, inner, params)
            return apply_updates(params, updates), inner

        return run(state, inner_step)

    tx = GradientTransformation(init, update)
    if fused is not None:
        register(tx, update_and_apply)
    return tx


def _as_float_array(value) -> jax.Array:
    """A strongly typed floating array: a weak type would retrace after set_hyperparams."""
    dtype, default = getattr(value, "dtype", None), jnp.dtype(jnp.result_type(float))
    # NumPy float64 without x64 is stored as float32 up front, not truncated with a warning.
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or jnp.dtype(dtype).itemsize > default.itemsize:
        dtype = default
    return jnp.asarray(value, dtype)


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
    """The current hyperparameters of an optimizer's state, by argument name.

    Schedules report their value at the last step taken.
    """
    found = _the_one(state)
    return {**found.hyperparams, **found.scheduled}


def set_hyperparams(state, **values):
    """Return ``state`` with the named hyperparameters replaced.

    Values are cast to the stored dtype and must keep its shape (use
    ``jax.vmap`` to hold one value per sweep member). Concrete values are
    range-checked; traced ones are accepted as they are.
    """
    target = _the_one(state)
    new, complements = dict(target.hyperparams), dict(target.complements)
    for name, value in values.items():
        if name in target.scheduled:
            raise ValueError(
                f"{name} is a schedule (step -> value), evaluated from the step count each"
                f" update, so it cannot be set; build the optimizer with a number for {name}"
                " to make it settable, or with a schedule that reads a hyperparameter"
            )
        if name not in new:
            raise ValueError(
                f"this optimizer has no hyperparameter {name!r}; it has {sorted(new)}"
                + (" (a momentum of 0 at construction builds no momentum buffer: pass"
                   " momentum > 0 to make it settable)" if name == "momentum" else "")
            )
        if name in RANGES:
            check_range(name, value)
        old = new[name]
        value = jnp.asarray(value, old.dtype)
        if value.shape != old.shape:
            raise ValueError(
                f"{name} has shape {old.shape} in the state but the new value has shape"
                f" {value.shape}; to give each member of a sweep its own value, call"
                " set_hyperparams inside jax.vmap"
            )
        new[name] = value
        if name in complements:
            complements[name] = _complement(values[name], old.dtype)
    replaced = target._replace(hyperparams=new, complements=complements)
    return jax.tree.map(
        lambda node: replaced if node is target else node,
        state,
        is_leaf=lambda node: node is target,
    )
