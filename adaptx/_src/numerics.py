"""Accumulator dtypes and the moment arithmetic every block shares."""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulator_dtype(leaf: Any, dtype: Optional[Any] = None) -> jnp.dtype:
    """The dtype to keep an accumulator of ``leaf`` in.

    ``dtype`` when given; float32 for bfloat16/float16 leaves (their 8 or 11
    mantissa bits cannot hold a running average); otherwise the leaf's own
    floating dtype (float64 stays float64 under ``jax_enable_x64``).
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    leaf_dtype = jnp.asarray(leaf).dtype
    if leaf_dtype in _LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(leaf_dtype, jnp.floating):
        return leaf_dtype
    return jnp.dtype(jnp.result_type(float))


def zeros_like_tree(params: Any, dtype: Optional[Any] = None, fill: Any = 0.0) -> Any:
    """A tree of ``fill``-valued accumulators shaped, and sharded, like ``params``."""
    return jax.tree.map(lambda p: full_like_param(p, fill, accumulator_dtype(p, dtype)), params)


def full_like_param(param: Any, fill: Any, dtype: Any) -> jax.Array:
    """A ``fill``-valued array with ``param``'s shape and sharding, eagerly and under jit.

    Eagerly ``full_like`` copies a concrete array's sharding. Under jit a
    constant has no operand to inherit a sharding from, so the compiler would
    replicate it (or, when nothing in the output depends on an input, put it on
    one device); ``shard_alike`` ties it to the param's sharding instead.
    """
    accumulator = jnp.full_like(param, fill, dtype)
    if isinstance(param, jax.core.Tracer):
        _, accumulator = shard_alike(param, accumulator)
    return accumulator


class Rate(NamedTuple):
    """A decay rate β and its complement 1 − β, each rounded once from double precision.

    Storing only float32 β and computing 1 − β in float32 would move 1 − 0.999
    by 1.3e-5 relative; torch.optim rounds both from the Python float, and so do we.
    """

    value: Any
    complement: Any


def split_rate(decay) -> Rate:
    """(β, 1 − β) for a Python float (complement in double), an array, or a Rate."""
    if isinstance(decay, Rate):
        return decay
    if isinstance(decay, (int, float)):
        return Rate(decay, 1.0 - decay)
    return Rate(decay, 1 - decay)


def rate_value(decay):
    return decay.value if isinstance(decay, Rate) else decay


def ema(moment, value, decay):
    """m ← β·m + (1 − β)·x, in the moment's dtype."""
    beta, complement = split_rate(decay)
    dtype = moment.dtype
    return jnp.asarray(beta, dtype) * moment + jnp.asarray(complement, dtype) * value.astype(dtype)


def bias(decay, count, dtype, power: bool = False):
    """1 − βᵗ, the weight a zero-initialised EMA has gathered after t steps.

    Computed as −expm1(t·log1p(−(1 − β))) from the complement, accurate to a
    few ulp where the naive float32 power loses up to 1e-5 relative. ``power``
    takes that naive 1 − βᵗ of β rounded to ``dtype``, as keras does.
    """
    if power:
        return 1 - jnp.power(jnp.asarray(rate_value(decay), dtype), count.astype(dtype))
    complement = jnp.asarray(split_rate(decay).complement, dtype)
    return -jnp.expm1(count.astype(dtype) * jnp.log1p(-complement))


def debias(moment, decay, count, power: bool = False):
    """m̂ = m / (1 − βᵗ), the bias correction of a zero-initialised EMA after t steps."""
    return moment / bias(decay, count, moment.dtype, power)


def increment(count):
    """count + 1, saturating at the int32 maximum instead of wrapping."""
    maximum = jnp.iinfo(jnp.int32).max
    return jnp.where(count < maximum, count + 1, maximum).astype(jnp.int32)


def as_dtype_of(like, *values):
    """Cast hyperparameters to the dtype of the array they combine with."""
    dtype = jnp.result_type(like)
    out = tuple(jnp.asarray(v, dtype) for v in values)
    return out if len(out) > 1 else out[0]


def unzip(tuples, like, n: int = 2):
    """Split a tree of n-tuples, shaped like ``like``, into n trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(tuples)
    return tuple(treedef.unflatten([t[i] for t in leaves]) for i in range(n))


def safe_sqrt(x):
    """√x whose derivative at 0 is 0, not ∞.

    An accumulator is 0 only while every gradient so far was 0, where its own
    derivative is 0 too; the naive ∞·0 would turn a hypergradient into NaN.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0).astype(x.dtype)
