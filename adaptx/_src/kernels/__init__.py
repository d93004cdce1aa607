"""The one-pass CPU kernel (``fused_step.cc``), built at install, called through ``jax.ffi``.

``pip install`` compiles ``fused_step.cc`` against jaxlib's FFI headers into a
shared library inside this package directory (``_fused_step*.so``; see setup.py,
where the extension is optional). This module only loads that file, with
ctypes, and registers its handler with XLA: no compiler runs at import or trace
time, there is no cache directory, and no environment variable chooses a path.
Where the library is missing (installed without a C++ compiler), damaged,
lacks the handler, or XLA refuses it, :func:`available` says False,
:func:`unavailable_reason` says why, and adaptx keeps to its jnp path, which
computes the same numbers in several passes.

Loading a shared library runs its code. The one loaded here is the file pip
wrote into the installed package, owned like the package's ``.py`` files;
whoever can replace it can replace those too, so a planted library needs write
access to site-packages (or to the source tree of an editable install), which
is outside what this loader defends. Its checks are for accidents: before
``dlopen`` it reads the ELF headers and refuses a file whose headers or
segments run past its end (a truncated library would be mapped and fault with
SIGBUS, killing the process, rather than fail).
"""
import contextlib
import contextvars
import ctypes
import functools
import importlib.util
import struct
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from adaptx._src import quantize

LIBRARY = f"{__name__}._fused_step"  # the extension setup.py builds, found as a module would be
SYMBOL = "AdaptxFusedStep"  # the handler fused_step.cc exports (XLA_FFI_DEFINE_HANDLER_SYMBOL)
TARGET = "adaptx_fused_step"
# Adam over one leaf with quantized moments (adaptx.Quantized): dequantize, step, requantize per block.
QUANTIZED_SYMBOL, QUANTIZED_TARGET = "AdaptxQuantizedStep", "adaptx_quantized_step"
# Adam's direction over one leaf with quantized moments: scale_by_adam's update on CPU (the plain path).
DIRECTION_SYMBOL, DIRECTION_TARGET = "AdaptxQuantizedDirection", "adaptx_quantized_direction"
OPTIMIZERS = {"adam": 0, "adagrad": 1, "rmsprop": 2}
# Slots of the hyperparameter vector; the order is the kernel's ``Slot`` enum.
SLOTS = ("neg_lr", "b1", "b1c", "b2", "b2c", "eps", "eps_root", "inv_bc1", "inv_bc2", "decay", "has_decay", "after")
MOMENTS = {"adam": 2, "adagrad": 1, "rmsprop": 1}
LEAF_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# XLA's compile time grows about cubically with one custom call's operands
# (400 leaves: 32 s, 1000: 386 s), so big trees are split into several calls.
LEAVES_PER_CALL = 16
# A call over fewer elements runs on the calling thread alone: waking a pool
# thread costs more than it saves there, and XLA runs independent calls side by side.
PARALLEL_MIN = 1 << 16
# Which loops the quantized steps run: 1, the AVX-512 ones where the CPU has them (else the portable
# ones), with VBMI's byte permutes where it has those too; 0, the portable ones; 2, the AVX-512 ones
# or an error; 3, the AVX-512 ones without VBMI, or an error. The tests set 0, 2 and 3 to check that
# all give the same numbers.
VECTOR = 1

NOT_BUILT = ("the one-pass kernel was not built when adaptx was installed (no C++ compiler?): "
             "reinstall adaptx with a C++ compiler to enable it; the plain path is used")
REINSTALL = "reinstall adaptx to rebuild it; the plain path is used"

_lock = threading.Lock()
_state: dict = {}


def library_path() -> Optional[Path]:
    """The kernel library installed in this package, or None where it was not built."""
    try:
        spec = importlib.util.find_spec(LIBRARY)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".so"):
        return None
    return Path(spec.origin)


def _check_elf(path: Path) -> None:
    """Raise OSError unless ``path`` is an ELF shared object whose headers and segments lie inside it."""
    with open(path, "rb") as file:
        data = file.read(1 << 16)
        size = file.seek(0, 2)
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise OSError(f"not an ELF file ({size} bytes)")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    header = order + ("16xHHIQQQIHHHHHH" if wide else "16xHHIIIIIHHHHHH")
    if len(data) < struct.calcsize(header):
        raise OSError(f"truncated ELF header ({size} bytes)")
    kind, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = struct.unpack_from(header, data)
    if kind != 3:  # ET_DYN
        raise OSError("not a shared object")
    if phoff + phentsize * phnum > size or shoff + shentsize * shnum > size:
        raise OSError(f"truncated: its headers run past its end ({size} bytes)")
    segment = order + ("IIQQQQ" if wide else "IIIIII")
    with open(path, "rb") as file:
        file.seek(phoff)
        table = file.read(phentsize * phnum)
    for i in range(phnum):
        fields = struct.unpack_from(segment, table, i * phentsize)
        kind, offset, filesz = (fields[0], fields[2], fields[5]) if wide else (fields[0], fields[1], fields[4])
        if kind == 1 and offset + filesz > size:  # PT_LOAD
            raise OSError(f"truncated: a segment runs past its end ({size} bytes)")


def _load(path: Path) -> Optional[str]:
    """Load the library at ``path`` and register its handler with XLA; None, or why it failed."""
    try:
        if sys.platform.startswith("linux"):
            _check_elf(path)
        library = ctypes.CDLL(str(path))
    except OSError as error:
        return f"the one-pass kernel library {path} cannot be loaded ({error}): {REINSTALL}"
    try:
        handlers = {target: getattr(library, symbol) for target, symbol in
                    ((TARGET, SYMBOL), (QUANTIZED_TARGET, QUANTIZED_SYMBOL),
                     (DIRECTION_TARGET, DIRECTION_SYMBOL))}
    except AttributeError as error:
        return f"the one-pass kernel library {path} lacks a handler ({error}): {REINSTALL}"
    try:
        for target, handler in handlers.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    except Exception as error:  # XLA refused it: e.g. built against an incompatible jaxlib
        return (f"XLA refused the one-pass kernel in {path} ({type(error).__name__}: {error}) under "
                f"jaxlib {jaxlib.__version__}: {REINSTALL}")
    _state["library"] = library  # kept for the process's life: XLA holds pointers into it
    return None


def available() -> bool:
    """Whether the kernel library is installed and registered with XLA (loads it on first call)."""
    with _lock:
        if "ok" not in _state:
            path = library_path()
            try:
                reason = NOT_BUILT if path is None else _load(path)
            except Exception as error:  # nothing a damaged install does may escape into a step
                reason = f"the one-pass kernel could not be loaded ({type(error).__name__}: {error}): {REINSTALL}"
            _state["ok"], _state["reason"] = reason is None, reason
        return _state["ok"]


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False (a sentence), or None where the kernel is in use."""
    available()
    return _state["reason"]


# A scalar the kernel calls must be computed after: see :func:`ordered_after`.
_after: contextvars.ContextVar = contextvars.ContextVar("adaptx_kernel_after", default=None)


@contextlib.contextmanager
def ordered_after(value):
    """Make the kernel calls traced inside depend on ``value`` (a scalar), which they ignore.

    In a train step the loss reads the params that the kernel then overwrites
    in place. Unless the call depends on the loss, XLA cannot order that read
    first and copies the params, twice, before the call; with the loss in an
    unused slot of the hyperparameter vector it orders them and copies nothing.
    """
    token = _after.set(jnp.asarray(value, jnp.float32).reshape(()))
    try:
        yield
    finally:
        _after.reset(token)


def _hyper_vector(hyper: dict):
    after = _after.get()
    if after is not None:
        hyper = {**hyper, "after": after}
    return jnp.stack([jnp.asarray(hyper.get(name, 0.0), jnp.float32) for name in SLOTS])


def _code_operands(mu, nu):
    """The code tables of ``mu`` and ``nu`` (operands) and their formats (attributes), for both quantized calls."""
    tables, attrs = [], {}
    for name, q in (("m", mu), ("v", nu)):
        start, midpoints, positive, negative, first, floor = quantize.tables(q.bits, q.signed)
        tables += [jnp.asarray(quantize.code(q.bits, q.signed)), jnp.asarray(start), jnp.asarray(midpoints),
                   jnp.asarray(positive), jnp.asarray(negative)]
        attrs.update({f"{name}_bits": np.int32(q.bits), f"{name}_signed": bool(q.signed),
                      f"{name}_first": np.int64(first), f"{name}_floor": np.float32(floor)})
    return tables, dict(attrs, block_size=np.int64(mu.block_size), parallel_min=np.int64(PARALLEL_MIN),
                        vector=np.int32(VECTOR))


def _rebuilt(q, codes, scales):
    return quantize.QuantizedArray(codes, scales, q.shape, q.bits, q.block_size, q.signed, q.grid)


def quantized_adam_step(hyper: dict, param, grad, mu, nu):
    """One Adam step of one leaf whose moments are :class:`~adaptx._src.quantize.QuantizedArray`.

    ``hyper`` as in :func:`step` (Adam's slots). Returns the new param and the new ``mu`` and
    ``nu``, each in its format: the numbers the jnp path (dequantize, step, quantize) computes,
    in one pass over the leaf. Each output aliases its input, as in :func:`step`.
    """
    if (mu.block_size != nu.block_size or mu.size != param.size or nu.size != param.size
            or mu.grid or nu.grid):  # blocks per shard are laid out otherwise
        raise ValueError(f"quantized moments {mu} and {nu} do not hold a leaf of shape {param.shape}")
    tables, attrs = _code_operands(mu, nu)
    operands = [_hyper_vector(hyper), param, grad, mu.codes, mu.scales, nu.codes, nu.scales, *tables]
    aliased = (1, 3, 4, 5, 6)
    results = [jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in aliased]
    call = jax.ffi.ffi_call(QUANTIZED_TARGET, results, input_output_aliases={i: k for k, i in enumerate(aliased)},
                            vmap_method="sequential")
    p, m_codes, m_scales, v_codes, v_scales = call(*operands, **attrs, rows=np.int64(1))
    return p, _rebuilt(mu, m_codes, m_scales), _rebuilt(nu, v_codes, v_scales)


def steps_quantized_adam(grad, mu, nu) -> bool:
    """Whether :func:`quantized_adam_direction` takes this leaf: both moments quantized alike, a real float32 or bfloat16 gradient."""
    return (quantize.is_quantized(mu) and quantize.is_quantized(nu) and mu.block_size == nu.block_size
            and mu.grid == nu.grid and mu.shape == nu.shape == tuple(jnp.shape(grad))
            and jnp.result_type(grad) in LEAF_DTYPES and available())


def quantized_adam_direction(hyper: dict, grad, mu, nu):
    """Adam's direction u = m̂ / (√v̂ + ε) over one leaf with quantized moments, and the new moments.

    ``scale_by_adam``'s update of one leaf on CPU, in one pass per block (dequantize, step,
    requantize) where the jnp path takes several; the same numbers. ``hyper`` holds Adam's
    slots (b1, b1c, b2, b2c, eps, eps_root, inv_bc1, inv_bc2). A sharded leaf's gradient is laid
    out as its moments are (each shard a row, blocked on its own), and over several devices each
    device steps its own shards: the call never moves a block between devices. The direction is
    written over the gradient (XLA copies it first only where the gradient lives on after the
    step, e.g. a jit's argument), so inside a training step it needs no buffer of its own.
    """
    rows = quantize.shard_rows(grad, mu.grid) if mu.grid else grad  # an unsharded leaf is one row as it is
    tables, attrs = _code_operands(mu, nu)
    operands = [_hyper_vector(hyper), rows, mu.codes, mu.scales, nu.codes, nu.scales, *tables]
    aliased = (2, 3, 4, 5)

    def call(*operands):  # on the whole leaf, or on one device's shards of it
        results = [jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in (1, *aliased)]
        ffi = jax.ffi.ffi_call(DIRECTION_TARGET, results, vmap_method="sequential",
                               input_output_aliases={1: 0, **{i: k + 1 for k, i in enumerate(aliased)}})
        return tuple(ffi(*operands, **attrs, rows=np.int64(np.prod(operands[3].shape[:-1], dtype=np.int64))))

    if jax.device_count() > 1:
        call = _per_shard(call, operands, len(mu.grid))
    u, m_codes, m_scales, v_codes, v_scales = call(*operands)
    return (quantize.from_shard_rows(u, mu.shape, mu.grid) if mu.grid else u, _rebuilt(mu, m_codes, m_scales),
            _rebuilt(nu, v_codes, v_scales))


def _per_shard(call, operands, rank):
    """``call`` over the shards of a quantized leaf: operands 1–5 (the gradient's rows, the codes and
    scales) are split over their first ``rank`` axes, the grid, alike; the rest is replicated.

    Explicit axes map the call with ``jax.shard_map``; otherwise ``custom_partitioning`` tells the
    partitioner that each device steps its own shards (it would gather an opaque call's operands).
    """
    mesh = _explicit_mesh(operands[:6])  # it skips the hyperparameter vector
    if mesh is not None:
        axes = tuple(jax.typeof(operands[1]).sharding.spec)[:rank]
        axes = axes + (None,) * (rank - len(axes))
        specs = [PartitionSpec()] + [PartitionSpec(*axes, *(None,) * (o.ndim - rank)) for o in operands[1:6]]
        specs += [PartitionSpec()] * (len(operands) - 6)
        operands[1:6] = [o if jax.typeof(o).sharding.spec == spec else jax.sharding.reshard(o, NamedSharding(mesh, spec))
                         for o, spec in zip(operands[1:6], specs[1:6])]
        return jax.shard_map(call, mesh=mesh, in_specs=tuple(specs), out_specs=tuple(specs[1:6]))
    partitioned = custom_partitioning(call)
    grid = [f"s{axis}" for axis in range(rank)]
    elements = [f"n{axis}" for axis in range(operands[1].ndim - rank)]  # an unsharded leaf keeps its shape
    local = [elements, ["b", "c"], ["b"], ["b", "e"], ["b"]]  # the gradient's elements, m's blocks and bytes, v's
    data = [" ".join(grid + names) for names in local]
    tables = [f"t{i}" for i in range(len(operands) - 6)]
    rule = ", ".join(["h", *data, *tables]) + " -> " + ", ".join(data)

    def partition(mesh, arg_shapes, result_shape):
        spec = tuple(arg_shapes[1].sharding.spec)[:rank]
        spec = spec + (None,) * (rank - len(spec))
        shardings = [NamedSharding(mesh, PartitionSpec(*spec, *(None,) * (len(s.shape) - rank))) for s in arg_shapes[1:6]]
        replicated = NamedSharding(mesh, PartitionSpec())
        return mesh, call, tuple(shardings), (replicated, *shardings, *[replicated] * len(tables))

    partitioned.def_partition(partition=partition, sharding_rule=rule,
                              need_replication_factors=("h", *elements, "b", "c", "e", *tables))

    # custom_partitioning has no batching rule: under jax.vmap (a sweep) the call runs once per
    # member, in a loop, as the FFI call's own vmap_method="sequential" does on one device.
    @jax.custom_batching.custom_vmap
    def run(*operands):
        return partitioned(*operands)

    @run.def_vmap
    def batched(size, in_batched, *operands):
        operands = [o if b else jnp.broadcast_to(o, (size, *o.shape)) for o, b in zip(operands, in_batched)]
        return jax.lax.map(lambda each: run(*each), operands), (True,) * 5

    return run


def step(optimizer: str, hyper: dict, params: Sequence, grads: Sequence, moments: Sequence, offsets=None):
    """Apply one step of ``optimizer`` to every leaf in one pass.

    ``hyper`` maps :data:`SLOTS` names to float32 scalars (missing ones are 0).
    ``moments`` holds, per moment, a list of float32 leaves shaped like the
    params; or, with ``offsets``, one flat float32 buffer per moment in which
    leaf i starts at ``offsets[i]``. Returns the new params and moments in the
    same layout. Each output aliases its input, so under a jit with donated
    buffers the step writes in place.
    """
    vector = _hyper_vector(hyper)
    new_params, new_moments = [], [[] for _ in moments] if offsets is None else list(moments)
    for start in range(0, len(params), LEAVES_PER_CALL):
        group = slice(start, start + LEAVES_PER_CALL)
        if offsets is None:
            leaf_moments = [m[group] for m in moments]
            p, ms = _call(optimizer, vector, params[group], grads[group], leaf_moments, shared=[], offsets=None)
            for k, m in enumerate(ms):
                new_moments[k] += m
        else:  # the flat buffers go through every call in turn, updated in place
            p, new_moments = _call(optimizer, vector, params[group], grads[group], [], new_moments, offsets[group])
        new_params += p
    return new_params, new_moments


def _call(optimizer, vector, params, grads, leaf_moments, shared, offsets):
    """One custom call; returns (new params, new per-leaf moment lists or new shared buffers)."""
    operands, aliased, owner = [vector], [], [None]  # owner: the leaf an operand belongs to
    for i, (p, g) in enumerate(zip(params, grads)):
        aliased.append(len(operands))
        operands += [p, g]
        for m in leaf_moments:
            aliased.append(len(operands))
            operands.append(m[i])
        owner += [i] * (2 + len(leaf_moments))
    for buffer in shared:
        aliased.append(len(operands))
        operands.append(buffer)
        owner.append(None)
    call = functools.partial(_ffi, optimizer, aliased, offsets, len(params))
    if offsets is None and jax.device_count() > 1:
        explicit = _explicit_mesh(operands)
        if explicit is not None:
            call, operands = _shard_mapped(call, operands, owner, aliased, explicit)
        else:
            call = _partitioned(call, owner, aliased)
    out = call(*operands)
    if offsets is not None:
        return list(out[:len(params)]), list(out[len(params):])
    width = 1 + len(leaf_moments)
    return list(out[0::width]), [list(out[k::width]) for k in range(1, width)]


def _ffi(optimizer, aliased, offsets, n_leaves, *operands):
    """The kernel's FFI call over ``operands``; output k overwrites operand ``aliased[k]`` in place."""
    results = [jax.ShapeDtypeStruct(operands[i].shape, operands[i].dtype) for i in aliased]
    call = jax.ffi.ffi_call(TARGET, results, input_output_aliases={i: k for k, i in enumerate(aliased)},
                            vmap_method="sequential")
    return call(*operands, optimizer=np.int32(OPTIMIZERS[optimizer]), parallel_min=np.int64(PARALLEL_MIN),
                flat=offsets is not None,
                offsets=np.asarray(offsets if offsets is not None else [0] * n_leaves, np.int64))


def _explicit_mesh(operands):
    """The mesh of operands typed with Explicit sharding axes (``jax.sharding.AxisType.Explicit``), or None."""
    for operand in operands[1:]:
        mesh = jax.typeof(operand).sharding.mesh
        if any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
            return mesh
    return None


def _shard_mapped(call, operands, owner, aliased, mesh):
    """``call`` under ``jax.shard_map`` for explicitly sharded operands: each device steps its slice.

    With Explicit axes the shardings are part of the types, so the step is
    mapped over them directly; a gradient or moment typed otherwise than its
    param is resharded to the param's layout first (a no-op when they agree).
    """
    specs, by_leaf = [PartitionSpec()], {}
    for operand, leaf in zip(operands[1:], owner[1:]):
        by_leaf.setdefault(leaf, jax.typeof(operand).sharding.spec)
        specs.append(PartitionSpec() if leaf is None else by_leaf[leaf])
    operands = [o if i == 0 or jax.typeof(o).sharding.spec == specs[i] else jax.sharding.reshard(o, specs[i])
                for i, o in enumerate(operands)]
    mapped = jax.shard_map(lambda *local: tuple(call(*local)), mesh=mesh, in_specs=tuple(specs),
                           out_specs=tuple(specs[i] for i in aliased))
    return mapped, operands


def _partitioned(call, owner, aliased):
    """``call`` run shard by shard: the step is elementwise, so each device steps its own slice.

    Without this the partitioner sees an opaque custom call and gathers every
    operand onto each device. Here a leaf's param, gradient and moments share
    one sharding (the param's), the hyperparameter vector (operand 0) is
    replicated, and each output keeps its operand's sharding: no collective.
    """
    partitioned = custom_partitioning(call)

    def partition(mesh, arg_shapes, result_shape):
        by_leaf = {}
        for shape, leaf in zip(arg_shapes, owner):
            if leaf is not None:
                by_leaf.setdefault(leaf, shape.sharding)  # the param's sharding rules its leaf
        replicated = NamedSharding(mesh, PartitionSpec())
        arg_shardings = tuple(replicated if leaf is None else by_leaf[leaf] for leaf in owner)
        return mesh, call, [arg_shardings[i] for i in aliased], arg_shardings

    def factors(leaf, rank):
        return " ".join(f"l{leaf}d{axis}" for axis in range(rank))

    def rule(*shapes):
        ranks = [len(s) for s in shapes]
        specs = ["h"] + [factors(leaf, rank) for leaf, rank in zip(owner[1:], ranks[1:])]
        return ", ".join(specs) + " -> " + ", ".join(specs[i] for i in aliased)

    def run(*operands):
        partitioned.def_partition(partition=partition, sharding_rule=rule(*(o.shape for o in operands)),
                                  need_replication_factors=("h",))
        return partitioned(*operands)

    return run
