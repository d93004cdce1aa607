"""Every moment-keeping optimizer of issue 12 takes adaptx.Quantized for its moments: one test each.

Each quantizes the moments it keeps (and only for the leaf of ≥ min_size elements), follows
its float32 self over 12 jitted steps on noise, and keeps its hyperparameters traced. The
deviation bound is the quantizer's, not a rounding bound: 8-bit moments carry a relative
error of up to half the code's widest gap (0.7 % of the block's absmax, see
test_quantize.py), which moves each step's direction by about that much; the bounds below
are the RMS deviation of the params from the float32 run relative to the float32 run's RMS
move, measured (in the comments) and given 2–3× headroom for other seeds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx._src import quantize as qz

Q = adaptx.Quantized(8)
# name: (build(dtype options) -> tx, quantized moment arrays for the big leaf, bound)
OPTIMIZERS = {
    "adam": (lambda **q: adaptx.adam(1e-2, mu_dtype=q.get("mu"), nu_dtype=q.get("nu")), 2, 0.04),  # 0.0136
    "adamw": (lambda **q: adaptx.adamw(1e-2, weight_decay=0.1, mu_dtype=q.get("mu"), nu_dtype=q.get("nu")),
              2, 0.04),  # 0.0130
    "rmsprop": (lambda **q: adaptx.rmsprop(1e-2, momentum=0.9, centered=True, mu_dtype=q.get("mu"),
                                           nu_dtype=q.get("nu")), 3, 0.04),  # ν, the centering mean, momentum: 0.0126
    "adagrad": (lambda **q: adaptx.adagrad(0.1, initial_accumulator=0.1, nu_dtype=q.get("nu")), 1, 0.015),  # 0.0040
    "sgd momentum": (lambda **q: adaptx.sgd(1e-2, 0.9, nesterov=True, mu_dtype=q.get("mu")), 1, 0.04),  # 0.0119
    "adafactor momentum": (lambda **q: adaptx.adafactor(1e-2, momentum=0.9, mu_dtype=q.get("mu")),
                           1, 0.04),  # 0.0143
}
PARAMS = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((64, 128)), jnp.float32), "b": jnp.zeros(8)}
GRADS = jnp.asarray(np.random.default_rng(1).standard_normal((12, 64, 128)), jnp.float32)


def run(tx, state):
    def step(carry, g):
        p, s = carry
        u, s = tx.update({"w": g, "b": jnp.ones(8)}, s, p)
        return (adaptx.apply_updates(p, u), s), None

    return jax.lax.scan(step, (PARAMS, state), GRADS)[0]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_takes_quantized_moments(name):
    build, moments, bound = OPTIMIZERS[name]
    tx = build(mu=Q, nu=Q)
    state = tx.init(PARAMS)
    quantized = [n for n in jax.tree.leaves(state, is_leaf=qz.is_quantized) if qz.is_quantized(n)]
    assert len(quantized) == moments and all(q.shape == (64, 128) for q in quantized), quantized
    traces = []

    def stepper(s):
        traces.append(1)
        return run(tx, s)

    stepper = jax.jit(stepper)
    params, final = stepper(state)
    assert jax.tree.structure(final, is_leaf=qz.is_quantized) == jax.tree.structure(state, is_leaf=qz.is_quantized)
    reference = jax.jit(lambda s: run(build(), s))(build().init(PARAMS))[0]
    rms = lambda x: float(np.sqrt(np.mean(np.square(np.asarray(x)))))  # noqa: E731
    deviation = rms(params["w"] - reference["w"]) / rms(reference["w"] - PARAMS["w"])
    assert deviation <= bound, deviation
    np.testing.assert_allclose(params["b"], reference["b"], rtol=1e-6)  # the small leaf stays float32
    stepper(adaptx.set_hyperparams(state, learning_rate=3e-3))
    assert len(traces) == 1  # hyperparameters stay traced
