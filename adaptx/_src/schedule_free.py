"""Schedule-free learning (Defazio et al., 2024): interpolation and averaging in place of momentum and a schedule."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptx._src import numerics as nx
from adaptx._src.base import GradientTransformation
from adaptx._src.hyperparams import _find
from adaptx._src.validate import check_range, check_tree_match


class ScheduleFreeState(NamedTuple):
    b1: jax.Array  # β of the y interpolation at the last update (read by schedule_free_eval_params)
    weight_sum: jax.Array  # Σ max-η^p so far
    max_lr: jax.Array
    base_state: Any
    z: Any  # the base optimizer's iterate


def schedule_free(base: GradientTransformation, learning_rate, b1: float = 0.9, weight_lr_power: float = 2.0,
                  *, state_dtype: Optional[Any] = None) -> GradientTransformation:
    """Make ``base`` schedule-free (Defazio et al., 2024, Algorithm 1); the params are y.

        z ← z + base(g at y)                     (base: a momentum-free step, η included)
        c = wₜ / Σᵢ≤ₜ wᵢ,   wₜ = (maxᵢ≤ₜ ηᵢ)^p     (p = ``weight_lr_power``)
        x ← (1 − c)·x + c·z,    y = β₁·x + (1 − β₁)·z,    u = y_new − y

    x, the point to evaluate at, is not stored: x = (y − (1 − β₁)·z)/β₁
    (:func:`schedule_free_eval_params`), so the state holds z beside the
    base's. ``learning_rate`` is this step's η, as the base uses it (a number or
    an array, e.g. from :func:`adaptx.with_hyperparams`). β₁ > 0.
    """
    check_range("weight_lr_power", weight_lr_power, "weight_decay")

    def init(params):
        dtype = nx.scalar_dtype()
        z = jax.tree.map(lambda p: jnp.array(p, nx.accumulator_dtype(p, state_dtype)), params)
        return ScheduleFreeState(jnp.array(nx.rate_value(b1), dtype), jnp.zeros([], dtype), jnp.zeros([], dtype),
                                 base.init(params), z)

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("schedule_free needs params: call update(grads, state, params)")
        check_tree_match(params, state.z, "z sequence", subject="params")
        beta, complement = nx.split_rate(b1)
        lr = jnp.asarray(learning_rate, state.max_lr.dtype)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** jnp.asarray(weight_lr_power, max_lr.dtype)
        total = state.weight_sum + weight
        c = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1), 0)
        steps, base_state = base.update(updates, state.base_state, params, **extra_args)

        def leaf(y, z, step):
            dt = z.dtype
            y_wide = y.astype(dt)
            new_z = z + step.astype(dt)
            x = (y_wide - nx.cast(complement, z) * z) / nx.cast(beta, z)
            x = x + nx.cast(c, z) * (new_z - x)
            new_y = nx.cast(beta, z) * x + nx.cast(complement, z) * new_z
            return new_z, (new_y - y_wide).astype(y.dtype)

        z, out = nx.unzip(jax.tree.map(leaf, params, state.z, steps), params)
        return out, ScheduleFreeState(jnp.array(beta, max_lr.dtype), total, max_lr, base_state, z)

    return GradientTransformation(init, update)


def schedule_free_eval_params(state, params):
    """x = (y − (1 − β₁)·z)/β₁: the averaged params to evaluate (and keep) a schedule-free run at."""
    found = _find(state, ScheduleFreeState)
    if len(found) != 1:
        raise ValueError(f"schedule_free_eval_params needs the state of one schedule-free optimizer, found {len(found)}")
    state = found[0]
    return jax.tree.map(
        lambda y, z: ((y.astype(z.dtype) - (1 - state.b1).astype(z.dtype) * z) / state.b1.astype(z.dtype)).astype(y.dtype),
        params, state.z)
