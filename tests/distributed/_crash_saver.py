"""A zygote for tests/distributed/test_checkpoint_safety.py: imports jax once, then forks one saving child per request.

Reads ``DIRECTORY`` lines on stdin; for each forks a child that saves
``checkpoint_at(i)`` to DIRECTORY with ``overwrite=True`` for i = 1, 2, ...
until it is killed, printing ``saving <pid> <i>`` before and ``saved <pid> <i>``
after each save, and ``reaped <pid> 0`` once it is dead. Forking before jax starts its backend is safe (importing
starts no threads) and spares each child the imports.
"""
import os
import sys
import threading

import jax
import jax.numpy as jnp

import adaptx
from adaptx import checkpoint

def optimizer():
    return adaptx.adam(1e-2)  # made in the child: building an optimizer starts jax's backend


def checkpoint_at(i: int):
    """The params and state saved as number ``i``: every leaf (the step count too) depends on ``i``."""
    params = {"w": jnp.arange(2048.0, dtype=jnp.float32).reshape(32, 64) * (i + 1),
              "b": jnp.full((64,), i, jnp.bfloat16)}
    state = jax.tree.map(lambda x: x + i, optimizer().init(params))
    return params, state


def child(directory: str) -> None:
    jax.config.update("jax_compilation_cache_dir", os.environ["ADAPTX_TEST_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    pid = os.getpid()
    for i in range(1, 10**6):
        print(f"saving {pid} {i}", flush=True)
        checkpoint.save(directory, *checkpoint_at(i), overwrite=True)
        print(f"saved {pid} {i}", flush=True)


if __name__ == "__main__":
    assert threading.active_count() == 1, threading.enumerate()
    from jax._src import xla_bridge
    assert not xla_bridge._backends, "jax's backend started before the fork"
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                child(line.strip())
            finally:
                os._exit(1)
        os.waitpid(pid, 0)  # the test kills it
        print(f"reaped {pid} 0", flush=True)
