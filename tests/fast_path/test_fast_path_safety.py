"""The fast path never crashes on bad input: every mismatch is a clean Python error naming the path."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_random_mismatches_give_clean_errors_never_a_signal():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "tests/fast_path/_fast_path_fuzz.py", "60"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode} (negative: a signal)\n{done.stdout}\n{done.stderr[-4000:]}"
    assert done.stdout.strip().startswith("OK"), done.stdout


PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}


@pytest.mark.parametrize("make", [lambda: adaptx.adam(0.1), lambda: adaptx.flat_state(adaptx.adam(0.1))],
                         ids=["adam", "flat adam"])
def test_a_state_made_for_smaller_params_is_refused_by_path(make):
    tx = make()
    small = tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"\['w'\]|float32 params"):
        jax.jit(lambda p, s: adaptx.update_and_apply(tx, p, s, p))(PARAMS, small)


def test_gradients_of_another_tree_are_refused_by_path():
    tx = adaptx.flat_state(adaptx.adam(0.1))
    grads = {"w": jnp.ones((4, 3)), "c": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"\['b'\]|\['c'\]"):
        adaptx.update_and_apply(tx, grads, tx.init(PARAMS), PARAMS)


def test_require_kernel_names_the_reason():
    loss = lambda p, b: jnp.sum(p["w"] ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="no one-pass step"):
        adaptx.make_train_step(loss, adaptx.adadelta(), require_kernel=True)
    step = adaptx.make_train_step(loss, adaptx.adam(0.1, mu_dtype=jnp.bfloat16), require_kernel=True)
    tx = adaptx.adam(0.1, mu_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="kernel cannot run: the moments are not float32"):
        step(PARAMS, tx.init(PARAMS), None)


def test_explain_says_why():
    assert adaptx.kernels.explain(adaptx.adam(0.1), PARAMS) == "runs the one-pass kernel"
    assert "float16" in adaptx.kernels.explain(adaptx.adam(0.1), jax.tree.map(lambda x: x.astype(jnp.float16), PARAMS))
    assert "no one-pass step" in adaptx.kernels.explain(adaptx.monitor(adaptx.adam(0.1)), PARAMS)


@pytest.mark.parametrize("make", [
    lambda: adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(0.1)),
    lambda: adaptx.adamw(0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    lambda: adaptx.skip_nonfinite(adaptx.adam(0.1)),
    lambda: adaptx.accumulate_gradients(adaptx.adam(0.1), 2),
    lambda: adaptx.partition({"a": adaptx.adam(0.1), "b": adaptx.rmsprop(0.1)}, {"w": "a", "b": "b"}),
    lambda: adaptx.masked(adaptx.adam(0.1), {"w": True, "b": False}),
    lambda: adaptx.flat_state(adaptx.adamw(0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))),
], ids=["clip-adam", "masked-adamw", "skip-adam", "accumulate-adam", "partition", "masked", "flat-masked-adamw"])
def test_compositions_keep_the_kernel_and_the_numbers(make):
    tx = make()
    assert adaptx.kernels.explain(tx, PARAMS) == "runs the one-pass kernel"
    step = jax.jit(lambda p, s, g: adaptx.update_and_apply(tx, g, s, p))
    assert step.lower(PARAMS, tx.init(PARAMS), PARAMS).as_text().count("adaptx_fused_step") >= 1
    params, state, plain_params, plain_state = PARAMS, tx.init(PARAMS), PARAMS, tx.init(PARAMS)
    for t in range(4):
        grads = jax.tree.map(lambda x, t=t: jnp.cos(x * (t + 1.0)), params)
        params, state = step(params, state, grads)
        updates, plain_state = tx.update(grads, plain_state, plain_params)
        plain_params = adaptx.apply_updates(plain_params, updates)
    # the kernel multiplies by 1/(1 − βᵗ) where the blocks divide: a few ulp per step
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=4 * 4 * 2.0**-23, atol=1e-7), params, plain_params)
