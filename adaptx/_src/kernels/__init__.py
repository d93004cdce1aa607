"""The one-pass CPU kernel (``fused_step.cc``): built on first use, called through ``jax.ffi``.

The kernel is compiled with the system's C++ compiler against jaxlib's FFI
headers into a per-user cache, once per source and jaxlib version. Where no
compiler is found or the build fails, :func:`available` says False (and
:func:`unavailable_reason` why) and adaptx keeps to its jnp path, which
computes the same numbers in several passes.
"""
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE = Path(__file__).with_name("fused_step.cc")
TARGET = "adaptx_fused_step"
OPTIMIZERS = {"adam": 0, "adagrad": 1, "rmsprop": 2}
# Slots of the hyperparameter vector; the order is the kernel's ``Slot`` enum.
SLOTS = ("neg_lr", "b1", "b1c", "b2", "b2c", "eps", "eps_root", "inv_bc1", "inv_bc2", "decay", "has_decay")
MOMENTS = {"adam": 2, "adagrad": 1, "rmsprop": 1}
LEAF_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# XLA's compile time grows about cubically with one custom call's operands
# (400 leaves: 32 s, 1000: 386 s), so big trees are split into several calls.
LEAVES_PER_CALL = 16
# A call over fewer elements runs on the calling thread alone: waking a pool
# thread costs more than it saves there, and XLA runs independent calls side by side.
PARALLEL_MIN = 1 << 16

_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    """Where built kernels are kept: ``$ADAPTX_CACHE_DIR`` or ``~/.cache/adaptx``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adaptx"
    return Path(os.environ.get("ADAPTX_CACHE_DIR", default))


def _build() -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + jaxlib.__version__.encode()).hexdigest()[:16]
    library = cache_dir() / f"fused_step-{key}.so"
    if library.exists():
        return library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    library.parent.mkdir(parents=True, exist_ok=True)
    # -ffp-contract=off: no fused multiply-adds, so each op rounds as XLA's does.
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        subprocess.run(
            [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno",
             "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(built)],
            check=True, capture_output=True, text=True,
        )
        os.replace(built, library)  # atomic: concurrent builders never see half a file
    return library


def available() -> bool:
    """Whether the kernel is built and registered with XLA (builds it on first call)."""
    with _lock:
        if "ok" not in _state:
            try:
                library = ctypes.cdll.LoadLibrary(str(_build()))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.AdaptxFusedStep), platform="cpu")
                _state["ok"] = True
            except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
                detail = getattr(error, "stderr", "") or ""
                _state["ok"], _state["reason"] = False, f"{error} {detail}".strip()
        return _state["ok"]


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False, or None."""
    return _state.get("reason")


def step(optimizer: str, hyper: dict, params: Sequence, grads: Sequence, moments: Sequence, offsets=None):
    """Apply one step of ``optimizer`` to every leaf in one pass.

    ``hyper`` maps :data:`SLOTS` names to float32 scalars (missing ones are 0).
    ``moments`` holds, per moment, a list of float32 leaves shaped like the
    params; or, with ``offsets``, one flat float32 buffer per moment in which
    leaf i starts at ``offsets[i]``. Returns the new params and moments in the
    same layout. Each output aliases its input, so under a jit with donated
    buffers the step writes in place.
    """
    vector = jnp.stack([jnp.asarray(hyper.get(name, 0.0), jnp.float32) for name in SLOTS])
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
