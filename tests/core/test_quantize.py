"""Quantized moments (adaptx.Quantized) against NumPy reference quantizers written from the papers.

Dettmers et al. 2022 (block-wise absmax, the dynamic code) and Li et al. 2023 §4
(4-bit, zero-point-free linear code for second moments). The references decode
every bit pattern of the code as the papers lay it out and quantize by brute-force
nearest value; adaptx's jitted quantizer must give the same numbers, and the
round-trip error of every block must stay within half the code's widest gap.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx._src import quantize as qz
from adaptx._src.fused import explain


def reference_dynamic_code(bits, signed):
    """Every bit pattern decoded: [sign] E zeros, an indicator 1, then k linear fraction bits:
    10^(−E)·(0.1 + 0.9·(f + ½)/2^k). The all-zero pattern is 0; the one left over (negative
    zero when signed; the last exponent's patterns when unsigned) is 1, the block's absmax."""
    free = bits - 1 if signed else bits
    values = []
    for pattern in range(2 ** free):
        if pattern == 0:
            values.append(0.0)
            continue
        exponent = free - pattern.bit_length()  # leading zeros
        k = pattern.bit_length() - 1  # bits after the indicator
        fraction = pattern - (1 << k)
        if not signed and exponent == free - 1:  # unsigned: the last exponent's one pattern becomes 1
            values.append(1.0)
            continue
        values.append(10.0 ** -exponent * (0.1 + 0.9 * (fraction + 0.5) / 2 ** k))
    if signed:
        values = values + [-v for v in values[1:]] + [1.0]
    return np.sort(np.asarray(values))


def reference_code(bits, signed):
    if signed or bits == 8:
        return reference_dynamic_code(bits, signed)
    return np.arange(1, 2 ** bits + 1) / 2 ** bits  # Li et al.: zero-point-free linear


def reference_round_trip(x, bits, block_size, signed):
    """Block-wise absmax, nearest code value by brute force; the dequantized float64 array."""
    values = reference_code(bits, signed)
    flat = np.asarray(x, np.float64).ravel()
    blocks = np.pad(flat, (0, -flat.size % block_size)).reshape(-1, block_size)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    normal = blocks / np.where(absmax > 0, absmax, 1)
    nearest = values[np.abs(normal[..., None] - values).argmin(axis=-1)]
    return (nearest * absmax).ravel()[:flat.size].reshape(np.shape(x)), absmax


FORMATS = [(8, True), (8, False), (4, True), (4, False)]


@pytest.mark.parametrize("bits, signed", FORMATS)
def test_code_is_the_papers(bits, signed):
    np.testing.assert_allclose(qz.code(bits, signed), reference_code(bits, signed), rtol=1e-6, atol=0)
    assert len(np.unique(qz.code(bits, signed))) == 2 ** bits


def _sample(rng, signed, n=4 * 256 + 100):
    """Log-uniform magnitudes over 8 decades (as moments are), random signs when signed."""
    x = 10.0 ** rng.uniform(-8, 0, n)
    return (x * (rng.choice([-1, 1], n) if signed else 1)).astype(np.float32)


@pytest.mark.parametrize("bits, signed", FORMATS)
def test_round_trip_matches_the_reference_and_the_codes_resolution(bits, signed):
    rng = np.random.default_rng(bits + signed)
    x = _sample(rng, signed)
    q = jax.jit(lambda x: qz.quantize(x, bits, 256, signed))(x)
    assert q.codes.dtype == jnp.uint8 and q.scales.dtype == jnp.float32
    assert q.codes.shape == (5, 256 * bits // 8) and q.scales.shape == (5,)  # 4-bit: two codes a byte
    got = np.asarray(qz.dequantize(q))
    want, absmax = reference_round_trip(x, bits, 256, signed)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    # Per block, |x − x̂| / absmax ≤ half the widest gap of the code (or the gap below its smallest value).
    values = reference_code(bits, signed)
    resolution = max(np.max(np.diff(values)) / 2, values.min() if values.min() > 0 else 0)
    blocks = np.pad(np.abs(got - x), (0, -x.size % 256)).reshape(-1, 256) / absmax
    assert blocks.max() <= resolution * (1 + 1e-6)


def test_small_and_complex_leaves_stay_float32():
    q = adaptx.Quantized()
    state = adaptx.adam(mu_dtype=q, nu_dtype=q).init(
        {"big": jnp.zeros((64, 64)), "small": jnp.zeros(4095), "complex": jnp.zeros(5000, jnp.complex64)})
    kinds = {type(n).__name__ for n in jax.tree.leaves(state, is_leaf=qz.is_quantized)}
    assert kinds == {"QuantizedArray", "ArrayImpl"}
    moments = state.inner_state[0]
    assert qz.is_quantized(moments.mu["big"]) and moments.mu["big"].signed
    assert not qz.is_quantized(moments.mu["small"]) and not qz.is_quantized(moments.nu["complex"])
    assert moments.nu["big"].signed is False  # second moments: the unsigned code
    assert {jnp.dtype(x.dtype).name for x in jax.tree.leaves(state)} <= {"uint8", "float32", "int32", "complex64"}


@pytest.mark.parametrize("bits, limit", [(8, 2.05), (4, 1.05)])
def test_adam_state_bytes_per_parameter(bits, limit):
    q = adaptx.Quantized(bits)
    params = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    state = jax.eval_shape(adaptx.adam(mu_dtype=q, nu_dtype=q).init, params)
    assert qz.state_bytes(state) / 1024 ** 2 <= limit  # measured 2.0156 and 1.0156
    float32 = jax.eval_shape(adaptx.adam().init, params)
    assert qz.state_bytes(float32) / 1024 ** 2 >= 8


def test_quantized_adam_follows_float32_adam_with_traced_hyperparameters():
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.standard_normal((64, 128)), jnp.float32), "b": jnp.zeros(8)}
    grads = jnp.asarray(rng.standard_normal((20, 64, 128)), jnp.float32)
    traces = []

    def run(tx, state):
        def step(carry, g):
            p, s = carry
            p, s = adaptx.update_and_apply(tx, {"w": g, "b": jnp.ones(8)}, s, p)
            return (p, s), None
        traces.append(1)
        return jax.lax.scan(step, (params, state), grads)[0][0]

    reference = jax.jit(lambda s: run(adaptx.adam(1e-2), s))(adaptx.adam(1e-2).init(params))
    for bits, tolerance in ((8, 0.03), (4, 0.35)):  # RMS deviation measured: 0.016 and 0.23 of the move on noise
        q = adaptx.Quantized(bits)
        tx = adaptx.adam(1e-2, mu_dtype=q, nu_dtype=q)
        stepper = jax.jit(lambda s: run(tx, s))
        got = stepper(tx.init(params))
        rms = lambda x: float(np.sqrt(np.mean(np.square(np.asarray(x)))))  # noqa: E731
        assert rms(got["w"] - reference["w"]) <= tolerance * rms(reference["w"] - params["w"])
        np.testing.assert_allclose(got["b"], reference["b"], rtol=1e-6)  # the small leaf is float32
        before = len(traces)
        stepper(adaptx.set_hyperparams(tx.init(params), learning_rate=1e-3, b1=0.8))
        assert len(traces) == before  # hyperparameters stay traced


@pytest.mark.kernel
def test_only_adams_kernel_reads_quantized_moments():
    q = adaptx.Quantized(8)
    params = {"w": jnp.ones((64, 64))}
    assert explain(adaptx.adam(mu_dtype=q, nu_dtype=q), params) == "runs the one-pass kernel"
    message = explain(adaptx.adagrad(0.1, nu_dtype=q), params)
    assert message.startswith("falls back") and "quantized" in message
    # leaves below min_size stay float32, so the kernel still takes them
    assert explain(adaptx.rmsprop(1e-3, nu_dtype=q), {"w": jnp.ones(8)}) == explain(adaptx.rmsprop(1e-3), {"w": jnp.ones(8)})


def test_invalid_formats_raise():
    with pytest.raises(ValueError, match="bits"):
        adaptx.Quantized(bits=2)
    with pytest.raises(ValueError, match="block_size"):
        adaptx.Quantized(block_size=255)


@pytest.mark.parametrize("bits, signed", FORMATS)
def test_round_trip_error_is_reported_per_block_within_the_codes_resolution(bits, signed):
    rng = np.random.default_rng(10 + bits + signed)
    x = _sample(rng, signed, n=16 * 256 + 37)  # a short last block too
    error = qz.round_trip_error(x, bits, 256, signed)
    assert error["max"].shape == error["rms"].shape == (17,)
    values = reference_code(bits, signed)
    # the resolution from the paper's code: half the widest gap, or the smallest value of a code without 0
    bound = max(np.max(np.diff(values)) / 2, values.min() if values.min() > 0 else 0)
    assert qz.resolution(bits, signed) == pytest.approx(bound, rel=1e-5)  # float32 code values
    assert np.all(error["max"] <= bound * (1 + 1e-5)) and np.all(error["rms"] <= error["max"])
    # the bound is the code's, not loose: on 8 decades of magnitudes some block comes near it
    assert error["max"].max() >= 0.5 * bound
    # against a brute-force round trip of the same blocks
    got, absmax = reference_round_trip(x, bits, 256, signed)
    blocks = np.pad(np.abs(got - x), (0, -x.size % 256)).reshape(-1, 256) / absmax
    # (the reference divides in float64, the quantizer multiplies by a float32 reciprocal)
    np.testing.assert_allclose(error["max"], blocks.max(axis=1), rtol=1e-4, atol=1e-12)
    assert np.all(qz.round_trip_error(np.zeros(300, np.float32), bits, 256, signed)["max"] == 0)


@pytest.mark.parametrize("bits, signed", FORMATS)
def test_initial_state_is_the_quantized_fill(bits, signed):
    for fill in (0.0, 0.1):
        built = qz.constant((1000,), fill, bits, 256, signed)
        quantized = qz.quantize(jnp.full((1000,), fill), bits, 256, signed)
        np.testing.assert_array_equal(qz.dequantize(built), qz.dequantize(quantized))
        np.testing.assert_array_equal(built.scales, quantized.scales)


def test_checkpoint_and_sweep_keep_working(tmp_path):
    """A quantized (and a factored) state is a pytree of arrays: orbax round-trips it, vmap sweeps it."""
    from adaptx import checkpoint
    q = adaptx.Quantized(4)
    params = {"w": jnp.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64), "b": jnp.zeros(3)}
    for name, tx in (("adam", adaptx.adam(1e-2, mu_dtype=q, nu_dtype=q)), ("adafactor", adaptx.adafactor())):
        state = tx.update(jax.tree.map(jnp.cos, params), tx.init(params), params)[1]
        checkpoint.save(str(tmp_path / name), params, state)
        _, restored = checkpoint.restore(str(tmp_path / name), tx, params)
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(a, b)
    tx = adaptx.adam(mu_dtype=q, nu_dtype=q)
    result = adaptx.sweep(lambda p, batch: jnp.sum((p["w"] - batch) ** 2), tx, {"w": params["w"]}, jnp.float32(0.3),
                          adaptx.grid(learning_rate=[1e-3, 1e-2]), steps=3, progress=False)
    assert np.all(np.isfinite(result.final_loss)) and result.final_loss[1] < result.final_loss[0]
