"""The one-pass kernel is built at install: importing and tracing run no compiler; a damaged library is refused.

Each check runs in a subprocess, which a bad library could kill with a signal;
the return code says whether it did.
"""
import importlib.util
import os
import pathlib
import stat
import struct
import subprocess
import sys
import textwrap

import pytest

from adaptx._src import kernels

ROOT = pathlib.Path(__file__).resolve().parents[2]

STEP = """
import jax, jax.numpy as jnp, numpy as np, adaptx
from adaptx._src import kernels
tx = adaptx.adam(1e-2)
params = {"w": jnp.full((5,), 0.5)}
new, _ = jax.jit(lambda p, s, g: adaptx.update_and_apply(tx, g, s, p))(params, tx.init(params), params)
np.testing.assert_allclose(new["w"], 0.5 - 1e-2, rtol=1e-6)
print("available", kernels.available())
print("reason", kernels.unavailable_reason())
"""


def run(code: str, tmp_path, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **(env or {})}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_library_is_the_one_in_the_package():
    path = kernels.library_path()
    if path is None:
        assert kernels.unavailable_reason() == kernels.NOT_BUILT
    else:
        assert path.parent == pathlib.Path(kernels.__file__).parent and path.name.startswith("_fused_step")


def test_import_and_a_jitted_step_run_no_compiler(tmp_path):
    """A compiler that would hang and leave a mark is on PATH, in CXX and CC; paths once read for a cache point at tmp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "compiler-ran"
    fake = bin_dir / "fake-cxx"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 600\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    for name in ("g++", "c++", "gcc", "cc", "clang++"):
        (bin_dir / name).symlink_to(fake)
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "CXX": str(fake), "CC": str(fake),
           "ADAPTX_CACHE_DIR": str(cache), "XDG_CACHE_HOME": ""}
    done = run(STEP, tmp_path, env, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    assert not marker.exists(), "a compiler ran at import or trace time"
    assert f"available {kernels.available()}" in done.stdout  # the installed library loads all the same
    assert not any(cache.iterdir()) and not any((tmp_path / "cwd").iterdir()), "a cache was written"


def elf_library() -> pathlib.Path:
    """A shared library to damage: the kernel where it was built, else numpy's extension."""
    path = kernels.library_path()
    if path is None:
        path = pathlib.Path(importlib.util.find_spec("numpy._core._multiarray_umath").origin)
    return path


def damaged(kind: str, directory: pathlib.Path) -> pathlib.Path:
    data = elf_library().read_bytes()
    if kind == "empty":
        data = b""
    elif kind == "garbage":
        data = bytes(range(256)) * 64
    elif kind == "truncated":
        data = data[:len(data) // 2]
    elif kind == "truncated-without-section-headers":
        # e_shoff, e_shnum, e_shstrndx zeroed: only the loadable segments show the truncation
        data = bytearray(data)
        struct.pack_into("<Q", data, 0x28, 0)
        struct.pack_into("<HH", data, 0x3C, 0, 0)
        data = bytes(data[:len(data) // 2])
    elif kind == "no-handler":  # a sound shared library without the kernel's symbol
        data = pathlib.Path(importlib.util.find_spec("numpy._core._multiarray_umath").origin).read_bytes()
    path = directory / f"_fused_step-{kind}.so"
    path.write_bytes(data)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries")
@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "truncated-without-section-headers", "no-handler"])
def test_a_damaged_library_is_refused_with_a_reason_never_a_signal(kind, tmp_path):
    library = damaged(kind, tmp_path)
    code = f"""
        import pathlib
        from adaptx._src import kernels
        kernels.library_path = lambda: pathlib.Path({str(library)!r})
        assert not kernels.available()
        print(kernels.unavailable_reason())
    """
    done = run(textwrap.dedent(code) + STEP, tmp_path)
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stderr[-4000:]}"
    reason = done.stdout.splitlines()[0]
    assert str(library) in reason and "reinstall adaptx" in reason and "the plain path is used" in reason, reason
    if kind == "no-handler":
        assert kernels.SYMBOL in reason
    assert "available False" in done.stdout


def test_a_library_xla_refuses_gives_a_reason(tmp_path):
    code = """
        import jax
        def refuse(*args, **kwargs):
            raise RuntimeError("unsupported FFI API version")
        jax.ffi.register_ffi_target = refuse
    """
    done = run(textwrap.dedent(code) + STEP, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    reason = done.stdout.splitlines()[-1]
    if kernels.library_path() is None:
        assert reason == f"reason {kernels.NOT_BUILT}"
    else:
        assert "XLA refused" in reason and "unsupported FFI API version" in reason and "reinstall adaptx" in reason
