"""The one-pass CPU kernel (``fused_step.cc``): built on first use, called through ``jax.ffi``.

The kernel is compiled with the system's C++ compiler against jaxlib's FFI
headers into a per-user cache, once per source and jaxlib version. Where no
compiler is found or the build fails, :func:`available` says False (and
:func:`unavailable_reason` why) and adaptx keeps to its jnp path, which
computes the same numbers in several passes.
"""
import ctypes
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


def step(optimizer: str, hyper: dict, params: Sequence, grads: Sequence, moments: Sequence[Sequence]):
    """Apply one step of ``optimizer`` to every leaf in one pass.

    ``hyper`` maps :data:`SLOTS` names to float32 scalars (missing ones are 0);
    ``moments`` holds one list of float32 leaves per moment. Returns the new
    params and moments; each output aliases its input, so under a jit with
    donated buffers the step writes in place.
    """
    vector = jnp.stack([jnp.asarray(hyper.get(name, 0.0), jnp.float32) for name in SLOTS])
    leaves = list(zip(params, grads, *moments))
    outputs = []
    for start in range(0, len(leaves), LEAVES_PER_CALL):
        outputs += _call(optimizer, vector, leaves[start:start + LEAVES_PER_CALL])
    new = list(zip(*outputs)) if outputs else [[] for _ in range(1 + len(moments))]
    return list(new[0]), [list(m) for m in new[1:]]


def _call(optimizer, vector, leaves):
    """One custom call over ``leaves`` [(p, g, *moments)]; returns [(p, *moments)]."""
    per_leaf = len(leaves[0])
    operands, results, aliases = [vector], [], {}
    for i, (p, g, *ms) in enumerate(leaves):
        operands += [p, g, *ms]
        for k, x in enumerate((p, *ms)):
            aliases[1 + i * per_leaf + (0 if k == 0 else k + 1)] = len(results)
            results.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    call = jax.ffi.ffi_call(TARGET, results, input_output_aliases=aliases, vmap_method="sequential")
    out = call(*operands, optimizer=np.int32(OPTIMIZERS[optimizer]), parallel_min=np.int64(PARALLEL_MIN))
    width = per_leaf - 1
    return [tuple(out[i * width:(i + 1) * width]) for i in range(len(leaves))]
