"""Builds the one-pass CPU kernel (adaptx/_src/kernels/fused_step.cc) with the package.

Everything else about the package is in pyproject.toml. The kernel is an optional
extension: where it does not compile (no C++ compiler, a platform without
``target_clones``), setuptools prints a warning, the package still installs, and
adaptx runs its jnp path (``adaptx._src.kernels.unavailable_reason()`` says so).

The kernel is a plain shared library, loaded with ctypes and registered through
``jax.ffi``; it is not a Python module. It compiles against the FFI headers that
jaxlib ships, found by ``jax.ffi.include_dir()``, so jax and jaxlib are build
requirements (pyproject.toml's ``[build-system] requires``).
"""
from setuptools import Extension, setup

try:
    import jax.ffi

    include_dirs = [jax.ffi.include_dir()]
except ImportError:  # a build without isolation and without jax: the optional build fails and is skipped
    include_dirs = []

fused_step = Extension(
    "adaptx._src.kernels._fused_step",
    sources=["adaptx/_src/kernels/fused_step.cc"],
    include_dirs=include_dirs,
    language="c++",
    # The flags the kernel was tuned with, after Python's own CFLAGS (which they override);
    # -ffp-contract=off: no fused multiply-adds, so each op rounds as XLA's does; -g0: no debug info.
    extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-g0", "-w"],
    optional=True,
)

setup(ext_modules=[fused_step])
