"""Guards and markers shared by the whole suite.

Layout: one folder per layer, ``core`` (blocks, optimizers, numerics), ``wrappers``,
``fast_path`` (the one-pass kernel), ``ecosystem`` (optax, flax, equinox), ``compat``
(torch.optim and Keras themselves), ``distributed`` (sharding, processes, checkpoints),
``docs`` (README, docs pages, demo) and ``bench`` (benchmark smoke runs). One helper
module, ``harness.py``, and the float64 references ``reference*.py`` sit beside this file,
which pytest puts on ``sys.path``.

Markers, so a machine without the peers or a compiler still runs the rest:

- ``parity``: needs torch==2.13 and Keras 3 (``pip install -e ".[test,parity]"``).
  ``-m "not parity"`` does not even import ``compat/``, whose modules import torch.
- ``kernel``: needs the compiled one-pass kernel (a C++ compiler at install).
  Every test in ``fast_path/`` carries it.

Without ``-m``, everything runs, and a missing peer or kernel fails loudly rather than
being skipped.
"""
import pathlib

import jax
import pytest

HERE = pathlib.Path(__file__).parent
AUTO_MARKERS = {"compat": "parity", "fast_path": "kernel"}


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: runs torch.optim or Keras themselves (the parity extra)")
    config.addinivalue_line("markers", "kernel: needs the compiled one-pass kernel (a C++ compiler at install)")


def _excluded(config, marker: str) -> bool:
    return f"not {marker}" in (config.getoption("markexpr") or "")


def pytest_ignore_collect(collection_path, config):
    folder = pathlib.Path(collection_path)
    for name, marker in AUTO_MARKERS.items():
        if folder == HERE / name and _excluded(config, marker):
            return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = pathlib.Path(item.path).relative_to(HERE).parts[0]
        if layer in AUTO_MARKERS:
            item.add_marker(AUTO_MARKERS[layer])


@pytest.fixture(autouse=True)
def x64_stays_off():
    """A test that needs float64 turns it on in ``with jax.enable_x64(True):``; it must not outlive the test.

    jax_enable_x64 changes the default dtype of every array, so a leak would
    silently turn the float32 tests after it into float64 ones.
    """
    assert not jax.config.jax_enable_x64, "jax_enable_x64 is on before this test: an earlier test leaked it"
    yield
    assert not jax.config.jax_enable_x64, (
        "this test left jax_enable_x64 on: switch it with `with jax.enable_x64(True):` so it is restored"
    )
