"""Every adaptive-family optimizer (issue 13) through adaptx's tools: sweep, monitor,
skip_nonfinite, checkpoints and 8 simulated devices; and docs/optimizers.md lists every alias.

One small problem for all: params {"w": 3×4, "b": 5} on the loss Σ ½·a·(θ − c)², a spanning
four decades, whose gradient a·(θ − c) is elementwise (no sum whose order a vmapped or sharded
program could change), so two programs of the same steps differ only by the optimizer's own
roundings: ``harness.rounding_bound`` for two float32 programs, plus the gradient's 2 operations.
"""
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx import checkpoint
from harness import relative_error, rounding_bound, step_cost

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 6

# Every family optimizer, with settings where each moves the params visibly in a few steps.
FAMILY = {
    "radam": lambda: adaptx.radam(1e-2),
    "adabelief": lambda: adaptx.adabelief(1e-2),
    "yogi": lambda: adaptx.yogi(1e-2),
    "lion": lambda: adaptx.lion(1e-3),
    "lamb": lambda: adaptx.lamb(1e-2, weight_decay=1e-2),
    "nadamw": lambda: adaptx.nadamw(1e-2),
    "adamaxw": lambda: adaptx.adamaxw(1e-2),
    "rprop": lambda: adaptx.rprop(1e-2),
    "novograd": lambda: adaptx.novograd(1e-2, weight_decay=1e-3),
    "adan": lambda: adaptx.adan(1e-2, weight_decay=1e-3),
    "adopt": lambda: adaptx.adopt(1e-2),
    "ademamix": lambda: adaptx.ademamix(1e-2),
    "schedule_free_adamw": lambda: adaptx.schedule_free_adamw(1e-2, weight_decay=1e-3),
    "prodigy": lambda: adaptx.prodigy(estim_lr0=1e-2, weight_decay=1e-3),  # d₀ large enough to move in 6 steps
}
# The hyperparameter each sweep varies: the learning rate, except rprop's (its Δ₀, read at init).
SWEPT = {name: ("learning_rate", [3e-3, 3e-2]) for name in FAMILY}
SWEPT["rprop"] = ("eta_plus", [1.1, 1.3])
SWEPT["prodigy"] = ("learning_rate", [0.5, 1.0])


def problem():
    rng = np.random.default_rng(13)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    scale = jax.tree.map(lambda p: (10.0 ** rng.uniform(-2, 2, p.shape)).astype(np.float32), params)
    centre = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    return jax.tree.map(jnp.asarray, params), (scale, centre)


def loss_fn(params, data):
    scale, centre = data
    return sum(jnp.sum(0.5 * a * (p - c) ** 2) for p, a, c in
               zip(jax.tree.leaves(params), jax.tree.leaves(scale), jax.tree.leaves(centre)))


def grads_of(params, data):
    """a·(θ − c), as jax.grad(loss_fn) computes it, written out so the sharded check needs no autodiff."""
    scale, centre = data
    return jax.tree.map(lambda p, a, c: a * (p - c), params, scale, centre)


def bound(name, steps=STEPS):
    ops, transcendentals = step_cost(name)
    return rounding_bound(steps, ops + 2, transcendentals, implementations=2)


@pytest.fixture(scope="module")
def setup():
    return problem()


def _stepper(tx):
    """One jitted step, the data an argument: the NaN step below reuses its compilation."""
    @jax.jit
    def step(params, state, data):
        updates, state = tx.update(jax.grad(loss_fn)(params, data), state, params)
        return adaptx.apply_updates(params, updates), state, updates
    return step


@pytest.mark.parametrize("name", FAMILY)
def test_sweep_matches_separate_runs(name, setup):
    """A vmapped sweep of two settings gives each the params of its own run (one compiled run
    serves both settings through set_hyperparams)."""
    params, data = setup
    tx = FAMILY[name]()
    hyper, values = SWEPT[name]
    result = adaptx.sweep(loss_fn, tx, params, data, {hyper: values}, steps=STEPS, progress=False)
    step = _stepper(tx)
    finals = []
    for i, value in enumerate(values):
        p, state = params, adaptx.set_hyperparams(tx.init(params), **{hyper: value})
        for _ in range(STEPS):
            p, state, _ = step(p, state, data)
        finals.append(p)
        for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(p)):
            assert relative_error(got[i], want) <= bound(name), (name, value, relative_error(got[i], want))
    # the two settings must actually differ, or the sweep proved nothing
    assert relative_error(finals[0]["w"], finals[1]["w"]) > 10 * bound(name)


@pytest.mark.parametrize("name", FAMILY)
def test_monitor_skip_nonfinite_and_checkpoint(name, setup, tmp_path):
    """monitor passes the updates through and reports ‖u‖/‖g‖; skip_nonfinite leaves params and
    state bit for bit as they were on a NaN gradient; a checkpoint restored mid-run resumes the
    trajectory bit for bit (same compiled step, same inputs)."""
    params, data = setup
    tx = adaptx.skip_nonfinite(adaptx.monitor(FAMILY[name](), per_coordinate=False))
    step = _stepper(tx)
    state = tx.init(params)
    p = params
    for _ in range(3):
        before = p
        p, state, updates = step(p, state, data)
    grads = jax.grad(loss_fn)(before, data)
    stats = adaptx.monitor_stats(state)
    for leaf in ("w", "b"):
        want = np.linalg.norm(np.asarray(updates[leaf])) / np.linalg.norm(np.asarray(grads[leaf]))
        # two float32 programs of two norms over ≤ 12 elements (Σx² 12, √ 1 each) and their ratio
        assert abs(float(stats["norm_ratio"][leaf]) - want) <= rounding_bound(1, 27, implementations=2) * want, (
            name, leaf, stats["norm_ratio"], want)
        assert want > 0, f"{name} did not move {leaf}"

    poisoned = jax.tree.map(lambda a: jnp.asarray(a).at[0].set(jnp.nan) if a.ndim == 1 else a, data)
    skipped_params, skipped_state, zero = step(p, state, poisoned)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(zero))
    jax.tree.map(np.testing.assert_array_equal, skipped_params, p)
    inner = lambda s: s.inner_state.inner_state  # noqa: E731  (the optimizer's own state, under both wrappers)
    jax.tree.map(np.testing.assert_array_equal, inner(skipped_state), inner(state))
    assert int(skipped_state.skipped) == 1

    checkpoint.save(tmp_path / "mid", p, state)
    restored_params, restored_state = checkpoint.restore(tmp_path / "mid", tx, params)
    for _ in range(3):
        p, state, _ = step(p, state, data)
        restored_params, restored_state, _ = step(restored_params, restored_state, data)
    jax.tree.map(np.testing.assert_array_equal, restored_params, p)
    jax.tree.map(np.testing.assert_array_equal, restored_state, state)


def test_every_method_on_8_devices():
    """One subprocess for all methods: XLA fixes the device count when jax starts."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "tests/wrappers/_family_sharding_check.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    assert sorted(re.findall(r"PASS (\S+)", done.stdout)) == sorted(FAMILY), done.stdout


def _optimizer_aliases():
    """Every optimizer adaptx exports: the functions of the alias modules named in adaptx.__all__."""
    modules = {"adaptx._src.aliases", "adaptx._src.family_aliases", "adaptx._src.adafactor"}
    return sorted(name for name in adaptx.__all__
                  if callable(getattr(adaptx, name)) and getattr(adaptx, name).__module__ in modules
                  and not isinstance(getattr(adaptx, name), type))


def test_optimizers_table_lists_every_exported_optimizer():
    """docs/optimizers.md has one table row per exported optimizer, named in its first column."""
    text = (ROOT / "docs" / "optimizers.md").read_text()
    listed = set(re.findall(r"^\| `adaptx\.(\w+)`", text, flags=re.MULTILINE))
    aliases = set(_optimizer_aliases())
    assert len(aliases) >= 22, aliases
    assert aliases <= listed, f"docs/optimizers.md misses {sorted(aliases - listed)}"
    assert listed <= aliases, f"docs/optimizers.md lists {sorted(listed - aliases)}, which adaptx does not export"
