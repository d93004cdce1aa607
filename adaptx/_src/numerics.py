"""Dtype policy and the scalar and moment arithmetic every block shares.

Nothing here knows about blocks, hyperparameter state or kernels: this is the
bottom layer (see docs/LAYERING.md).
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike

from adaptx._src.validate import path_name
from adaptx._src import quantize as quantize_module
from adaptx._src.quantize import Quantized, load, quantize, quantizes, store  # noqa: F401  (re-exported)

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def scalar_dtype() -> jnp.dtype:
    """Scalars shared by every leaf (hyperparameters, 1 − βᵗ): float32, or float64 under x64.

    Read when called, not at import: x64 may be switched on after adaptx is imported.
    """
    return jnp.dtype(jnp.result_type(float))


def check_inexact(tree: Any, what: str) -> None:
    """Raise TypeError naming the first leaf of ``tree`` that is not floating or complex.

    An integer or boolean param cannot take a fractional step, and an integer
    gradient would silently truncate one; both are almost always a mistake
    (e.g. a step counter left in the trainable tree).
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{what} at {path_name(path)} has dtype {dtype}; adaptx optimizers step floating"
                f" or complex arrays only: keep integer and boolean leaves out of the tree you"
                f" optimise (e.g. with adaptx.masked or an equinox/flax filter)"
            )


def accumulator_dtype(leaf: Any, dtype: Optional[Any] = None) -> jnp.dtype:
    """The dtype to keep an accumulator of ``leaf`` in.

    ``dtype`` when given; float32 for bfloat16/float16 leaves (their 8 or 11
    mantissa bits cannot hold a running average); otherwise the leaf's own
    floating or complex dtype (float64 stays float64 under x64).
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    leaf_dtype = jnp.dtype(jnp.result_type(leaf))
    if leaf_dtype in _LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(leaf_dtype, jnp.inexact):
        return leaf_dtype
    return scalar_dtype()


def real_accumulator_dtype(leaf: Any, dtype: Optional[Any] = None) -> jnp.dtype:
    """:func:`accumulator_dtype` for a second moment, which is real even for complex leaves."""
    return jnp.dtype(jnp.finfo(accumulator_dtype(leaf, dtype)).dtype)


def zeros_like_tree(params: Any, dtype: Optional[Any] = None, fill: Any = 0.0, *, real: bool = False) -> Any:
    """A tree of ``fill``-valued accumulators shaped, and sharded, like ``params``.

    ``real`` takes the real dtype of complex leaves (second moments |g|²).
    """
    choose = real_accumulator_dtype if real else accumulator_dtype
    if isinstance(dtype, Quantized):
        # Quantized moments (adaptx.Quantized): large real leaves as codes, the rest in float32;
        # second moments (``real``) take the unsigned code, the others the signed one.
        def leaf(p):
            if not quantizes(p, dtype):
                return full_like_param(p, fill, choose(p, None))
            grid = quantize_module.shard_grid(p)  # blocks per shard: none straddles two devices
            if isinstance(fill, (int, float)):  # known blocks: no pass over a filled array
                return quantize_module.constant(jnp.shape(p), fill, dtype.bits, dtype.block_size, signed=not real,
                                                grid=grid, sharding=_named_sharding(p) if grid else None)
            return quantize(full_like_param(p, fill, choose(p, None)), dtype.bits, dtype.block_size,
                            signed=not real, grid=grid)
        return jax.tree.map(leaf, params)
    return jax.tree.map(lambda p: full_like_param(p, fill, choose(p, dtype)), params)


def _named_sharding(param):
    """``param``'s sharding: its type's under jit (explicit axes), else its own."""
    return jax.typeof(param).sharding if isinstance(param, jax.core.Tracer) else param.sharding


def full_like_param(param: Any, fill: Any, dtype: Any) -> jax.Array:
    """A ``fill``-valued array with ``param``'s shape and sharding, eagerly and under jit.

    ``param`` may be an array, a Python number or a ``jax.ShapeDtypeStruct``.
    Eagerly the sharding is copied. Under jit a constant has no operand to
    inherit a sharding from, so the compiler would replicate it; ``shard_alike``
    ties it to the param's sharding instead.
    """
    if isinstance(param, jax.ShapeDtypeStruct):
        sharding = param.sharding if isinstance(param.sharding, jax.sharding.Sharding) else None
        return jnp.full(param.shape, fill, dtype, device=sharding)
    accumulator = jnp.full_like(param, fill, dtype)
    if isinstance(param, jax.core.Tracer):
        _, accumulator = shard_alike(param, accumulator)
    return accumulator


class Rate(NamedTuple):
    """A decay rate β and its complement 1 − β, each rounded once from double precision.

    Storing only float32 β and computing 1 − β in float32 would move 1 − 0.999
    by 1.3e-5 relative; torch.optim rounds both from the Python float, and so
    does adaptx. A block receives a ``Rate`` for each hyperparameter it
    declares a rate (``with_hyperparams(..., rates=...)``); :func:`split_rate`
    reads a Rate, a Python number or an array alike.
    """

    value: Any
    complement: Any


def split_rate(decay) -> Rate:
    """(β, 1 − β) for a Python number (complement in double), an array, or a Rate."""
    if isinstance(decay, Rate):
        return decay
    if isinstance(decay, (int, float)):
        return Rate(decay, 1.0 - decay)
    return Rate(decay, 1 - decay)


def rate_value(decay):
    """β alone, from a Rate or a plain value."""
    return decay.value if isinstance(decay, Rate) else decay


def cast(value, like):
    """A hyperparameter or scalar in the dtype of the array it combines with.

    A Python number stays one: jax rounds it to the array's dtype where it is
    used, with no array made per leaf. An array already of that dtype is
    returned as is, so a cast adds no equation per leaf.
    """
    if isinstance(value, (int, float)):
        return value
    dtype = like.dtype if hasattr(like, "dtype") else jnp.dtype(like)
    return value if getattr(value, "dtype", None) == dtype else jnp.asarray(value, dtype)


def abs_sq(g, like):
    """|g|² = g·conj(g) (optax's convention for complex g), in the dtype of the real moment ``like``.

    Cast before squaring: a bfloat16 square would lose the bits the float32 moment keeps.
    """
    dtype = jnp.result_type(like)
    if jnp.iscomplexobj(g):
        return jnp.square(g.real.astype(dtype)) + jnp.square(g.imag.astype(dtype))
    g = g.astype(dtype)
    return g * g


def ema(moment, value, decay):
    """m ← β·m + (1 − β)·x, in the moment's dtype."""
    beta, complement = split_rate(decay)
    value = value.astype(moment.dtype)
    return cast(beta, moment) * moment + cast(complement, moment) * value


def bias_correction(decay, count) -> jax.Array:
    """1 − βᵗ at step t = ``count``: the weight a zero-initialised EMA has gathered.

    A scalar, computed once per step for every leaf, as −expm1(t·log1p(−(1 − β)))
    from the complement: accurate to a few ulp, where the naive float32 power
    loses up to 1e-5 relative.
    """
    dtype = scalar_dtype()
    complement = jnp.asarray(split_rate(decay).complement, dtype)
    return -jnp.expm1(count.astype(dtype) * jnp.log1p(-complement))


def increment(count):
    """count + 1, saturating at the int32 maximum instead of wrapping."""
    return jnp.minimum(count, jnp.iinfo(jnp.int32).max - 1) + 1


def unzip(tuples, like, n: int = 2):
    """Split a tree of n-tuples, shaped like ``like``, into n trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(tuples)
    return tuple(treedef.unflatten([t[i] for t in leaves]) for i in range(n))


@jax.custom_jvp
def safe_sqrt(tree):
    """√x of every array in ``tree``, whose derivative at 0 is 0, not ∞.

    An accumulator is 0 only while every gradient so far was 0, where its own
    derivative is 0 too; the naive ∞·0 would turn a hypergradient into NaN.
    The forward pass is one ``sqrt`` per array, and the whole tree is one
    custom-derivative call: tracing one per leaf would cost more than the math.
    """
    return jax.tree.map(jnp.sqrt, tree)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    def leaf(x, dx):
        root = jnp.sqrt(x)
        positive = root > 0
        return root, jnp.where(positive, dx / (2 * jnp.where(positive, root, 1)), 0).astype(root.dtype)

    (tree,), (tangent,) = primals, tangents
    return unzip(jax.tree.map(leaf, tree, tangent), tree)


def initial_count(count) -> Any:
    """A block's initial step count: zero when it counts itself, None when the caller passes ``count``."""
    return jnp.zeros([], jnp.int32) if count is None else None


def this_step(count, state) -> tuple:
    """(t, the block's next own count): t = 1, 2, ... is this update's step.

    From the caller's ``count`` (updates applied before this one, as
    :func:`adaptx.with_hyperparams` passes it) when given, else from the
    block's own ``state.count``, which it then keeps.
    """
    if count is None:
        step = increment(state.count)
        return step, step
    return increment(count), None


def block_state(counted: type, uncounted: type, own, *fields):
    """``counted(own, *fields)`` for a block that counts itself, else ``uncounted(*fields)``.

    A state has one count (``optax.tree_utils.tree_get(state, "count")``
    finds it), so a block whose caller counts keeps no count field at all.
    """
    return uncounted(*fields) if own is None else counted(own, *fields)


def stored(update):
    """Wrap a block's ``update`` so that it sees and returns its state in float32.

    Quantized leaves (:class:`adaptx.Quantized` moments) are dequantized on the
    way in and requantized on the way out, inside the same traced step; for a
    state without any this changes nothing.
    """
    def wrapped(updates, state, params=None, **extra_args):
        out, new_state = update(updates, load(state), params, **extra_args)
        return out, store(new_state, state)

    wrapped.__name__, wrapped.__doc__ = update.__name__, update.__doc__
    return wrapped
