"""Quantized moments: block-wise absmax scaling onto an 8-bit or 4-bit code, as a state format.

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022 (arXiv:2110.02861), and Li, Chen & Zhu, "Memory
Efficient Optimizers with 4-bit States", NeurIPS 2023 (arXiv:2309.01507).

A leaf x of n elements is cut into blocks of B (zero-padded); each block b
keeps its absmax s_b = max|x_b| in float32 and each element the index of the
code value nearest x/s_b (Dettmers et al. §2). Signed moments (first moments,
momentum) use the *dynamic* code of Dettmers et al. §2.2 / Appendix; non-negative
ones (second moments) an unsigned code: the unsigned dynamic code at 8 bits,
and at 4 bits Li et al.'s zero-point-free linear code (§4.1: a code with 0
would map small v to 0 and blow up 1/√v). 4-bit codes are packed two per byte.

This is the bottom layer beside ``numerics`` (docs/LAYERING.md): it imports nothing of adaptx.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A moment state format: ``mu_dtype=adaptx.Quantized(bits=8, block_size=256)`` (or ``nu_dtype``).

    Real floating leaves of at least ``min_size`` elements (4096, as
    bitsandbytes) are stored as ``bits``-bit codes with one float32 absmax per
    ``block_size`` elements; smaller (and complex) leaves stay float32. Each
    step dequantizes, updates in float32 and requantizes, inside the jitted
    update. State bytes per element: bits/8 + 4/block_size.
    """

    bits: int = 8
    block_size: int = 256
    min_size: int = 4096

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"Quantized supports bits=8 or bits=4, got {self.bits!r}")
        if not isinstance(self.block_size, int) or self.block_size < 2 or self.block_size % 2:
            raise ValueError(f"block_size must be an even integer ≥ 2, got {self.block_size!r}")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"min_size must be a non-negative integer, got {self.min_size!r}")


def dynamic_code(bits: int, signed: bool) -> np.ndarray:
    """Dettmers et al.'s dynamic (tree) code, sorted: 2**bits values in [−1, 1] (or [0, 1]).

    After the sign bit (signed), a run of E zero bits sets the decimal
    exponent 10^(−E), the first one bit ends it, and the remaining bits
    index a linear grid of the fraction in [0.1, 1] (the midpoints of its
    2^k equal cells). Besides those, the code holds 0 and 1 (the absmax itself);
    8 bits signed: 10^0 … 10^−6, unsigned 10^0 … 10^−6 with twice the fraction cells.
    """
    free = bits - 1 if signed else bits  # bits after the sign
    values = [0.0, 1.0]
    # E zeros, an indicator, free − E − 1 fraction bits; unsigned codes give their last
    # exponent up to make room for 1 (bitsandbytes keeps 1 likewise).
    for exponent in range(free if signed else free - 1):
        cells = 2 ** (free - 1 - exponent)
        edges = np.linspace(0.1, 1.0, cells + 1)
        means = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (-exponent)
        values += list(means) + ([*(-means)] if signed else [])
    values = np.sort(np.asarray(values, np.float64))
    assert len(values) == 2 ** bits, (bits, signed, len(values))
    return values.astype(np.float32)


def linear_code(bits: int) -> np.ndarray:
    """Li et al.'s zero-point-free linear code for non-negative values: (i + 1)/2^bits, i = 0 … 2^bits − 1."""
    return (np.arange(1, 2 ** bits + 1) / 2 ** bits).astype(np.float32)


@functools.lru_cache(maxsize=None)
def code(bits: int, signed: bool) -> np.ndarray:
    """The code values of a format: dynamic for signed moments, unsigned dynamic (8 bits) or linear (4 bits)."""
    if signed or bits == 8:
        return dynamic_code(bits, signed)
    return linear_code(bits)


@jax.tree_util.register_pytree_node_class
class QuantizedArray:
    """One quantized leaf: ``codes`` (uint8; 4-bit codes two per byte) and ``scales`` (float32 absmax per block).

    A pytree of those two arrays, with the leaf's shape and format as static
    data: checkpoints, ``jax.vmap`` and ``jax.jit`` see only arrays.

    ``grid`` is the leaf's shard grid, how many shards each of its axes is split into
    (``()`` when it is not sharded). Blocks never straddle shards: a sharded leaf is cut
    into its shards (a reshape that splits each axis into shard × local, then a transpose
    that brings the shard axes first) and each shard's elements are blocked on their own,
    so ``codes`` is ``(*grid, blocks per shard, bytes per block)`` and ``scales``
    ``(*grid, blocks per shard)``, sharded over the same mesh axes as the param: each device
    holds exactly its shard's codes and scales, and quantizing needs no communication.
    """

    def __init__(self, codes, scales, shape, bits, block_size, signed, grid=()):
        self.codes, self.scales = codes, scales
        self.shape, self.bits, self.block_size, self.signed = tuple(shape), bits, block_size, signed
        self.grid = tuple(grid)

    def tree_flatten(self):
        return (self.codes, self.scales), (self.shape, self.bits, self.block_size, self.signed, self.grid)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def dtype(self):  # what it holds once dequantized
        return jnp.dtype(jnp.float32)

    @property
    def size(self):
        return int(np.prod(self.shape))

    def __repr__(self):
        grid = f", grid={self.grid}" if self.grid else ""
        return (f"QuantizedArray(shape={self.shape}, bits={self.bits}, block_size={self.block_size},"
                f" signed={self.signed}{grid})")


def shard_grid(leaf) -> tuple:
    """How many shards each axis of ``leaf`` is split into under its NamedSharding, or ``()``.

    Read from a concrete array's or a ``jax.ShapeDtypeStruct``'s sharding, or from a traced
    value's type under explicit sharding (``jax.sharding.AxisType.Explicit``); ``()`` for an
    unsharded leaf, any other sharding, or an axis its shards do not divide evenly.
    """
    sharding = getattr(leaf, "sharding", None) if not isinstance(leaf, jax.core.Tracer) else None
    if sharding is None:
        try:
            sharding = jax.typeof(leaf).sharding
        except Exception:  # a Python number, or a jax without typeof
            return ()
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return ()
    shape = np.shape(leaf)
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    grid = []
    for size, axes in zip(shape, spec):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        count = int(np.prod([sharding.mesh.shape[a] for a in axes])) if axes else 1
        if size % count:
            return ()
        grid.append(count)
    return tuple(grid) if any(g > 1 for g in grid) else ()


def _local_shape(shape, grid):
    return tuple(n // g for n, g in zip(shape, grid))


def _explicit(x):
    """x's NamedSharding when its mesh has Explicit axes (then reshapes must name their output's), else None."""
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    return sharding if any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())) else None


def _spec(x, rank):
    sharding = _explicit(x)
    spec = tuple(sharding.spec) if sharding is not None else ()
    return spec + (None,) * (rank - len(spec))


def _reshape(x, shape, spec):
    """``x.reshape(shape)``; under explicit sharding typed ``spec`` (the layouts here keep each
    shard on its device, so the reshape moves nothing between devices)."""
    sharding = _explicit(x)
    if sharding is None:
        return x.reshape(shape)
    return lax.reshape(x, tuple(shape), out_sharding=jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec)))


def _to_shards(x, grid):
    """x (the leaf's shape) → (*grid, shard elements): each shard's elements, row-major, contiguous."""
    if not grid:
        sharding = _explicit(x)
        if sharding is not None:  # blocks over the whole leaf: gather it first
            x = jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
        return jnp.ravel(x)
    rank = len(grid)
    spec = _spec(x, rank)
    local = _local_shape(x.shape, grid)
    split = _reshape(x, [n for pair in zip(grid, local) for n in pair], [a for s in spec for a in (s, None)])
    moved = jnp.transpose(split, [2 * d for d in range(rank)] + [2 * d + 1 for d in range(rank)])
    return _reshape(moved, (*grid, int(np.prod(local))), (*spec, None))


def _from_shards(flat, shape, grid):
    """The inverse of :func:`_to_shards`."""
    if not grid:
        return flat.reshape(shape)
    rank = len(grid)
    spec = _spec(flat, rank + 1)[:rank]
    local = _local_shape(shape, grid)
    split = _reshape(flat, (*grid, *local), (*spec, *(None,) * rank))
    order = [i for d in range(rank) for i in (d, rank + d)]
    return _reshape(jnp.transpose(split, order), shape, spec)


def shard_rows(x, grid: tuple):
    """``x`` laid out as a quantized leaf of shard grid ``grid`` is: ``(*grid, shard elements)``, each shard's
    elements contiguous (the flat leaf when ``grid`` is ``()``); :func:`from_shard_rows` undoes it."""
    return _to_shards(x, grid)


def from_shard_rows(rows, shape, grid: tuple):
    """The inverse of :func:`shard_rows`: the rows put back into a leaf of ``shape``."""
    return _from_shards(rows, shape, grid)


def shapes(tree) -> Any:
    """``tree`` with each quantized leaf replaced by its shape and dtype (a ``jax.ShapeDtypeStruct``)."""
    return jax.tree.map(lambda n: jax.ShapeDtypeStruct(n.shape, n.dtype) if is_quantized(n) else n, tree,
                        is_leaf=is_quantized)


def is_quantized(node) -> bool:
    return isinstance(node, QuantizedArray)


def quantizes(leaf, spec) -> bool:
    """Whether ``spec`` stores ``leaf`` quantized: a Quantized spec, a real leaf of at least min_size elements."""
    return (isinstance(spec, Quantized) and int(np.prod(np.shape(leaf))) >= max(spec.min_size, 1)
            and not jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating))


_KEY_SHIFT = 16  # a float32's bits >> 16: its exponent and top 7 mantissa bits, cells 2⁻⁷ wide relative


@functools.lru_cache(maxsize=None)
def tables(bits: int, signed: bool):
    """Lookup tables for the nearest code value of a magnitude a ∈ [0, 1], without a search.

    ``start[key(a) − key₀]`` is the number of magnitude midpoints below the lower edge of a's
    cell (a float32 cell: its exponent and top 7 mantissa bits); each cell holds at most one
    midpoint, so j = start + (a > midpoint[start]) is the nearest magnitude. Magnitudes below
    the first cell (key₀, under half the smallest nonzero magnitude) all round to j = 0.
    ``index_of[sign][j]`` is then the code's index of ±magnitude[j] (for a signed code without
    −1, −1 goes to the most negative value, its nearest). The one-pass kernel takes these
    same tables as operands (adaptx/_src/kernels), so both paths pick the same codes.
    """
    values = code(bits, signed)
    magnitudes = np.unique(np.abs(values))
    midpoints = ((magnitudes[1:] + magnitudes[:-1]) / 2).astype(np.float32)
    floor = np.float32(midpoints[0] / 4)  # every magnitude under it rounds to magnitudes[0]
    first = int(floor.view(np.uint32) >> _KEY_SHIFT)
    keys = np.arange(first, (np.float32(1).view(np.uint32) >> _KEY_SHIFT) + 1, dtype=np.uint32)
    lower = (keys << _KEY_SHIFT).view(np.float32)
    upper = (np.minimum(keys + 1, keys[-1]) << _KEY_SHIFT).view(np.float32)
    start = np.searchsorted(midpoints, lower, side="left")
    assert np.all(np.searchsorted(midpoints, upper, side="left") - start <= 1), "a cell holds two midpoints"
    assert start[0] == 0
    positive = np.searchsorted(values, magnitudes)
    negative = np.array([np.abs(values - (-m if m < 1 or (values == -1).any() else -values.max())).argmin()
                         if m > 0 else positive[0] for m in magnitudes])
    if not signed:
        negative = positive
    padded = np.append(midpoints, np.float32(np.inf))
    return start.astype(np.uint8), padded, positive.astype(np.uint8), negative.astype(np.uint8), first, floor


def _lookup(table, index):
    """``table[index]`` for a small constant table: under explicit sharding the result is typed
    with the indices' sharding (jax cannot infer it from a table that lives on no mesh)."""
    table = jnp.asarray(table)
    sharding = jax.typeof(index).sharding
    mesh = getattr(sharding, "mesh", None)
    if any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return table.at[index].get(out_sharding=sharding)
    return table[index]


def _nearest(normal, bits: int, signed: bool):
    """The index of the code value nearest each element of ``normal`` (in [−1, 1]), as uint8."""
    start, midpoints, positive, negative, first, floor = tables(bits, signed)
    magnitude = jnp.clip(jnp.abs(normal), floor, 1.0)
    key = lax.shift_right_logical(lax.bitcast_convert_type(magnitude, jnp.uint32), jnp.uint32(_KEY_SHIFT))
    j = _lookup(start, (key - jnp.uint32(first)).astype(jnp.int32)).astype(jnp.int32)
    j = j + (magnitude > _lookup(midpoints, j)).astype(jnp.int32)
    if not signed:
        return _lookup(positive, j)
    both = np.concatenate([positive, negative])  # one gather: j, or j + len for negative elements
    return _lookup(both, j + (normal < 0).astype(jnp.int32) * positive.shape[0])


def quantize(x, bits: int, block_size: int, signed: bool, grid: tuple = ()) -> QuantizedArray:
    """x → nearest code index of x/absmax per block, absmax kept in float32; blocks per shard of ``grid``."""
    shape = np.shape(x)
    flat = _to_shards(jnp.asarray(x).astype(jnp.float32), grid)
    pad = -flat.shape[-1] % block_size
    padded = jnp.pad(flat, [(0, 0)] * (flat.ndim - 1) + [(0, pad)])
    blocks = _reshape(padded, (*grid, padded.shape[-1] // block_size, block_size), (*_spec(padded, len(grid)), None, None)[:len(grid) + 2])
    # The absmax as the largest magnitude's bits: for non-negative floats the integer order is the
    # float order and a NaN's bits lie above all others', so a NaN makes its block's absmax NaN (a
    # float max on XLA's CPU may skip it), as in the native kernel.
    magnitudes = lax.bitcast_convert_type(blocks, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    scales = lax.bitcast_convert_type(jnp.max(magnitudes, axis=-1), jnp.float32)
    normal = blocks * (1 / jnp.where(scales > 0, scales, 1))[..., None]
    index = _nearest(normal, bits, signed)
    if bits == 4:
        index = index[..., 0::2] | (index[..., 1::2] << 4)
    return QuantizedArray(index, scales, shape, bits, block_size, signed, grid)


def constant(shape, fill: float, bits: int, block_size: int, signed: bool, grid: tuple = (),
             sharding=None) -> QuantizedArray:
    """``quantize(full(shape, fill))`` built directly: every block's absmax is |fill|, every code ±1 (or 0).

    An initial state: quantizing the filled array itself would cost a pass over it (and,
    eagerly, a compilation per op). ``sharding``, the param's NamedSharding when ``grid`` is
    not ``()``, places each shard's codes and scales on the devices holding that shard.
    """
    local = int(np.prod(_local_shape(shape, grid))) if grid else int(np.prod(shape))
    blocks = -(-local // block_size)
    values = code(bits, signed)
    target = 0.0 if fill == 0 else np.sign(fill)
    index = int(np.abs(values - target).argmin())
    if bits == 4:
        index = index | (index << 4)
    codes_shape, scales_shape = (*grid, blocks, block_size * bits // 8), (*grid, blocks)
    codes_at = scales_at = None
    if grid and sharding is not None:
        spec = tuple(sharding.spec) + (None,) * (len(grid) - len(sharding.spec))
        codes_at = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec, None, None))
        scales_at = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec, None))
    codes = jnp.full(codes_shape, index, jnp.uint8, device=codes_at)
    scales = jnp.full(scales_shape, abs(float(fill)), jnp.float32, device=scales_at)
    return QuantizedArray(codes, scales, shape, bits, block_size, signed, grid)


def _unpacked(q: QuantizedArray):
    index = q.codes
    if q.bits == 4:
        index = jnp.stack([index & 0xF, index >> 4], axis=-1).reshape(*index.shape[:-1], -1)
    return index


def _unblocked(q: QuantizedArray, blocks):
    """(*grid, blocks, B) → the leaf's shape: padding dropped, shards put back in place."""
    flat = _reshape(blocks, (*q.grid, int(np.prod(blocks.shape[len(q.grid):]))), _spec(blocks, len(q.grid) + 1))
    local = int(np.prod(_local_shape(q.shape, q.grid))) if q.grid else q.size
    return _from_shards(flat[..., :local], q.shape, q.grid)


def decode_indices(q: QuantizedArray) -> jax.Array:
    """The code index of every element of ``q`` (4-bit codes unpacked), shaped like the leaf."""
    return _unblocked(q, _unpacked(q))


def dequantize(q: QuantizedArray) -> jax.Array:
    """The float32 array ``q`` holds: code value × block absmax."""
    values = _lookup(code(q.bits, q.signed), _unpacked(q).astype(jnp.int32)) * q.scales[..., None]
    return _unblocked(q, values)


def resolution(bits: int, signed: bool) -> float:
    """The largest round-trip error the code allows, relative to the block's absmax.

    Half the widest gap between neighbouring code values (the nearest value is never further
    away), or, for a code without 0 (Li et al.'s zero-point-free one), its smallest value, where
    everything below rounds up to. For the signed codes, which hold 1 but not −1, −1 rounds to the
    most negative value, as far from it as half the widest gap (both are 0.9/2^k/2 at 10^0).
    """
    values = code(bits, signed).astype(np.float64)
    return float(max(np.max(np.diff(values)) / 2, values.min() if values.min() > 0 else 0.0,
                     1 + values.min() if signed else 0.0))


def round_trip_error(x, bits: int, block_size: int, signed: bool) -> dict:
    """Per block of ``x``: the largest and the RMS |x − dequantize(quantize(x))|, relative to the block's absmax.

    Returns ``{"max": (blocks,), "rms": (blocks,)}`` NumPy arrays (blocks whose absmax is 0
    are exact and report 0); :func:`resolution` bounds every ``max``.
    """
    x = np.asarray(x, np.float32)
    q = quantize(jnp.asarray(x), bits, block_size, signed)
    error = np.abs(np.asarray(dequantize(q), np.float64) - x).ravel()
    count = error.size
    blocks = np.pad(error, (0, -count % block_size)).reshape(-1, block_size)
    absmax = np.asarray(q.scales, np.float64).reshape(-1)
    relative = blocks / np.where(absmax > 0, absmax, 1)[:, None]
    sizes = np.minimum(block_size, count - np.arange(len(absmax)) * block_size)  # the last block may be short
    return {"max": relative.max(axis=1), "rms": np.sqrt(np.sum(relative ** 2, axis=1) / sizes)}


def load(tree) -> Any:
    """``tree`` with every quantized leaf dequantized to float32 (a no-op for a tree without any)."""
    return jax.tree.map(lambda n: dequantize(n) if is_quantized(n) else n, tree, is_leaf=is_quantized)


def store(new, like) -> Any:
    """``new`` with each leaf requantized where ``like`` (the state it replaces) holds a quantized one."""
    def leaf(old, value):
        return quantize(value, old.bits, old.block_size, old.signed, old.grid) if is_quantized(old) else value

    return jax.tree.map(leaf, like, new, is_leaf=is_quantized)


def state_bytes(tree) -> int:
    """Bytes held by the arrays of ``tree`` (a state), quantized or not."""
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
