"""Adam's plain path with quantized moments: ``scale_by_adam``'s update runs one native call per leaf on CPU.

What every client runs (``tx.update`` then ``apply_updates``) takes the kernel's one pass per
block for a leaf whose two moments are :class:`adaptx.Quantized`, inside any composition; the
numbers are the jnp step's (two float32 programs, harness.leaf_bound; a code moves by one index
where the two moments, an ulp apart, straddle a midpoint), the nearest code is the jnp
quantizer's to the bit on values packed around every midpoint, and the AVX-512 loops give the
portable loops' numbers bit for bit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adaptx
from adaptx._src import kernels, quantize as qz
from harness import leaf_bound, relative_error, step_cost

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the one-pass kernel is not built")

FORMATS = [(8, 8), (4, 4), (8, 4), (4, 8)]
HYPER = dict(b1=0.9, b1c=0.1, b2=0.999, b2c=1e-3, eps=1e-8, inv_bc1=10.0, inv_bc2=1000.0)


def quantized_adam(bits, **kwargs):
    return adaptx.adam(1e-2, mu_dtype=adaptx.Quantized(bits[0]), nu_dtype=adaptx.Quantized(bits[1]), **kwargs)


def wide(rng, shape, dtype=jnp.float32):
    """Gradients over twelve decades, a sprinkle of exact zeros."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-9, 3, shape)
    return jnp.asarray(np.where(rng.random(shape) < 0.02, 0.0, x), dtype)


def params_of(rng, dtype):
    # a partial last block, a high-rank leaf, and a small leaf that stays float32
    return {"w": jnp.asarray(rng.standard_normal((97, 55)), dtype),
            "t": jnp.asarray(rng.standard_normal((4, 8, 16, 10)), dtype),
            "b": jnp.asarray(rng.standard_normal(12), dtype)}


def plain_step(tx):
    return jax.jit(lambda g, s, p: (lambda u, s: (adaptx.apply_updates(p, u), s))(*tx.update(g, s, p)))


@pytest.fixture
def jnp_path(monkeypatch):
    """Within it, scale_by_adam takes no leaf natively: the jnp step (dequantize, step, quantize)."""
    def use():
        monkeypatch.setattr(kernels, "steps_quantized_adam", lambda *leaf: False)
    return use


@pytest.mark.parametrize("bits", FORMATS, ids=lambda b: f"{b[0]}-{b[1]}bit")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_plain_path_runs_native_and_matches_the_jnp_step(bits, dtype, jnp_path):
    rng = np.random.default_rng(sum(bits))
    params = params_of(rng, dtype)
    tx = quantized_adam(bits)
    state = tx.init(params)
    step = plain_step(tx)
    for _ in range(3):  # varied codes first
        params, state = step(jax.tree.map(lambda p: wide(rng, p.shape, p.dtype), params), state, params)
    grads = jax.tree.map(lambda p: wide(rng, p.shape, p.dtype), params)
    assert step.lower(grads, state, params).as_text().count(kernels.DIRECTION_TARGET) == 2  # w and t
    got = step(grads, state, params)
    jnp_path()
    jnp_step = plain_step(tx)
    assert kernels.DIRECTION_TARGET not in jnp_step.lower(grads, state, params).as_text()
    want = jnp_step(grads, state, params)
    bound = leaf_bound(dtype, 1, *step_cost("adam"), implementations=2)
    for name in params:
        assert relative_error(got[0][name], want[0][name]) <= bound, name
    moments = (got[1].inner_state[0], want[1].inner_state[0])
    for field in ("mu", "nu"):
        for name in ("w", "t"):
            g, w = getattr(moments[0], field)[name], getattr(moments[1], field)[name]
            assert qz.is_quantized(g) and (g.bits, g.signed, g.grid) == (w.bits, w.signed, w.grid)
            assert relative_error(g.scales, w.scales) <= leaf_bound(jnp.float32, 1, *step_cost("adam"), implementations=2)
            codes = [np.asarray(qz.decode_indices(q)).astype(int) for q in (g, w)]
            moved = codes[0] != codes[1]
            assert moved.mean() <= 1e-3 and np.all(np.abs(codes[0] - codes[1])[moved] == 1), (field, name)
        assert not qz.is_quantized(getattr(moments[0], field)["b"])


def packed_around_midpoints(bits, signed, rng, block_size=256):
    """Blocks of x with absmax exactly 1 whose other elements sit on, and an ulp or two either side
    of, every midpoint between two code values (then random ones): the nearest code's hardest cases."""
    values = qz.code(bits, signed).astype(np.float32)
    magnitudes = np.unique(np.abs(values))
    mids = ((magnitudes[1:] + magnitudes[:-1]) / 2).astype(np.float32)
    near = [mids]
    for steps in (1, 2, 3):
        up, down = mids.copy(), mids.copy()
        for _ in range(steps):
            up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-1))
        near += [up, down]
    near += [magnitudes, rng.random(2000).astype(np.float32), np.float32(10.0) ** rng.uniform(-9, 0, 2000).astype(np.float32)]
    x = np.clip(np.concatenate(near), 0, 1).astype(np.float32)
    if signed:
        x = np.where(rng.random(x.size) < 0.5, -x, x)
    per_block = block_size - 1
    x = np.pad(x, (0, -x.size % per_block)).reshape(-1, per_block)
    return np.concatenate([np.ones((len(x), 1), np.float32), x], axis=1).ravel()  # each block's absmax: 1


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("vector", [0, 2], ids=["portable", "avx512"])
def test_nearest_code_is_the_jnp_quantizers_on_every_midpoint(bits, signed, vector, monkeypatch):
    """With β₁ = β₂ = 0 the new moments are g and g², so their codes are quantize(g) and quantize(g²).

    The kernel takes each moment's code from its QuantizedArray, so m is given the code under
    test (an unsigned one too, which Adam keeps for v) and g sits around every midpoint of it.
    """
    monkeypatch.setattr(kernels, "VECTOR", vector)
    rng = np.random.default_rng(bits + vector + signed)
    grad = jnp.asarray(packed_around_midpoints(bits, signed, rng))
    n = grad.size
    mu, nu = qz.constant((n,), 0.0, bits, 256, signed), qz.constant((n,), 0.0, bits, 256, False)
    hyper = dict(b1=0.0, b1c=1.0, b2=0.0, b2c=1.0, eps=1e-8, inv_bc1=1.0, inv_bc2=1.0)
    try:
        _, new_mu, new_nu = jax.block_until_ready(
            jax.jit(lambda g, mu, nu: kernels.quantized_adam_direction(hyper, g, mu, nu))(grad, mu, nu))
    except Exception as error:
        if "lacks AVX-512" in str(error):
            pytest.skip("this CPU lacks AVX-512")
        raise
    for new, want in ((new_mu, qz.quantize(grad, bits, 256, signed)), (new_nu, qz.quantize(grad * grad, bits, 256, False))):
        np.testing.assert_array_equal(new.codes, want.codes)
        np.testing.assert_array_equal(new.scales, want.scales)


@pytest.mark.parametrize("bits", FORMATS, ids=lambda b: f"{b[0]}-{b[1]}bit")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_avx512_and_portable_loops_agree_bit_for_bit(bits, dtype, monkeypatch):
    rng = np.random.default_rng(7 * sum(bits))
    params = params_of(rng, dtype)
    grads = [jax.tree.map(lambda p: wide(rng, p.shape, p.dtype), params) for _ in range(4)]
    grads[2]["w"] = grads[2]["w"].at[3, 7].set(jnp.nan)  # a NaN: its block's scale and codes alike too
    txs = {"plain": quantized_adam(bits), "one-pass": adaptx.adamw(1e-2, weight_decay=0.1, mu_dtype=adaptx.Quantized(
        bits[0]), nu_dtype=adaptx.Quantized(bits[1]))}
    for path, tx in txs.items():
        runs = []
        for vector in (2, 3, 0):
            monkeypatch.setattr(kernels, "VECTOR", vector)
            if path == "plain":
                step = plain_step(tx)
            else:
                step = jax.jit(lambda g, s, p: adaptx.update_and_apply(tx, g, s, p))
            p, s = params, tx.init(params)
            try:
                for g in grads:
                    p, s = step(g, s, p)
                runs.append(jax.block_until_ready((p, s)))
            except Exception as error:
                if "lacks AVX-512" in str(error):
                    pytest.skip("this CPU lacks AVX-512")
                raise
        for other in runs[1:]:  # AVX-512 with VBMI (where the CPU has it) vs without, and vs portable
            for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(other)):  # (a NaN's payload aside)
                np.testing.assert_array_equal(np.asarray(a).astype(np.float64), np.asarray(b).astype(np.float64),
                                              err_msg=path)


@pytest.mark.parametrize("block_size", [2, 34])
def test_block_sizes_off_the_vector_width_agree_bit_for_bit(block_size, monkeypatch):
    """Blocks of 2 and 34 elements: the AVX-512 loops' masked tails give the portable loops' numbers."""
    rng = np.random.default_rng(block_size)
    params = {"w": jnp.asarray(rng.standard_normal(1003), jnp.float32)}
    grads = [{"w": wide(rng, (1003,))} for _ in range(3)]
    for bits in (8, 4):
        q = adaptx.Quantized(bits, block_size=block_size, min_size=16)
        tx = adaptx.adam(1e-2, mu_dtype=q, nu_dtype=q)
        runs = []
        for vector in (2, 3, 0):
            monkeypatch.setattr(kernels, "VECTOR", vector)
            step, p, s = plain_step(tx), params, tx.init(params)
            try:
                for g in grads:
                    p, s = step(g, s, p)
            except Exception as error:
                if "lacks AVX-512" in str(error):
                    pytest.skip("this CPU lacks AVX-512")
                raise
            runs.append((p, s))
        for other in runs[1:]:
            for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(other)):
                np.testing.assert_array_equal(a, b)


def test_a_nan_gradient_makes_its_block_nan_and_leaves_the_others(jnp_path):
    """A NaN gradient element makes its block's moments NaN (its absmax is NaN), as float32 Adam's
    moment is NaN there: never a silent finite code; the jnp step's quantizer does the same."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.standard_normal(5000), jnp.float32)}
    tx = quantized_adam((8, 8))
    grads = {"w": wide(rng, (5000,)).at[300].set(jnp.nan)}
    got = plain_step(tx)(grads, tx.init(params), params)
    jnp_path()
    want = plain_step(tx)(grads, tx.init(params), params)
    assert np.isnan(got[0]["w"][300]) and np.isfinite(np.delete(np.asarray(got[0]["w"]), 300)).all()
    for field in ("mu", "nu"):
        g, w = getattr(got[1].inner_state[0], field)["w"], getattr(want[1].inner_state[0], field)["w"]
        scales = np.asarray(g.scales)
        assert np.isnan(scales[1]) and np.isfinite(np.delete(scales, 1)).all()
        np.testing.assert_array_equal(scales, np.asarray(w.scales))  # the NaN block's too
        np.testing.assert_array_equal(np.asarray(g.codes), np.asarray(w.codes))


def test_the_native_step_survives_composition():
    """optax.chain, optax.MultiSteps and inject_hyperparams-style traced rates keep the native call."""
    q = adaptx.Quantized(8)
    params = {"w": jnp.ones((80, 64))}
    for tx in (optax.chain(optax.clip_by_global_norm(1.0), adaptx.adam(1e-3, mu_dtype=q, nu_dtype=q)),
               optax.MultiSteps(adaptx.adam(1e-3, mu_dtype=q, nu_dtype=q), every_k_schedule=2),
               adaptx.adamw(1e-3, weight_decay=1e-2, mu_dtype=q, nu_dtype=q),
               adaptx.masked(adaptx.adam(1e-3, mu_dtype=q, nu_dtype=q), {"w": True})):
        step = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
        assert kernels.DIRECTION_TARGET in step.lower(params, tx.init(params), params).as_text(), tx
    # AMSGrad keeps v_max and one moment unquantized takes the jnp step: no native call
    for tx in (adaptx.adam(1e-3, amsgrad=True, mu_dtype=q, nu_dtype=q), adaptx.adam(1e-3, mu_dtype=q)):
        step = jax.jit(lambda g, s, p: tx.update(g, s, p)[0])
        assert kernels.DIRECTION_TARGET not in step.lower(params, tx.init(params), params).as_text()


def test_a_sweep_over_learning_rates_matches_separate_runs():
    rng = np.random.default_rng(5)
    params = {"w": jnp.asarray(rng.standard_normal((64, 80)), jnp.float32)}
    data = {"x": jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)}

    def loss(p, batch):
        return jnp.mean(jnp.square(batch["x"] @ p["w"] - 1.0))

    tx = quantized_adam((8, 8))
    rates = [1e-3, 3e-3, 1e-2]
    swept = adaptx.sweep(loss, tx, params, data, {"learning_rate": rates}, steps=6, progress=False)
    for i, rate in enumerate(rates):
        alone = adaptx.adam(rate, mu_dtype=adaptx.Quantized(8), nu_dtype=adaptx.Quantized(8))
        p, s = params, alone.init(params)
        step = jax.jit(lambda p, s: (lambda u, s: (adaptx.apply_updates(p, u), s))(
            *alone.update(jax.grad(loss)(p, data), s, p)))
        for _ in range(6):
            p, s = step(p, s)
        got = jax.tree.map(lambda x: x[i], swept.params)
        assert relative_error(got["w"], p["w"]) <= leaf_bound(jnp.float32, 6, *step_cost("adam"), implementations=2)


def test_native_checks_refuse_a_moment_that_does_not_hold_the_leaf():
    n = 5000
    grads = jnp.ones(n)
    mu, nu = qz.constant((n,), 0.0, 8, 256, True), qz.constant((n,), 0.0, 8, 256, False)
    jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, mu, nu))  # the well-formed call runs
    short = qz.QuantizedArray(mu.codes[:-1], mu.scales, mu.shape, 8, 256, True)  # one block's codes missing
    with pytest.raises(Exception, match="does not hold its leaf's blocks"):
        jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, short, nu))
    bad_scales = qz.QuantizedArray(nu.codes, nu.scales[:-2], nu.shape, 8, 256, False)
    with pytest.raises(Exception, match="does not hold its leaf's blocks"):
        jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, mu, bad_scales))


def test_native_checks_refuse_bad_code_tables_after_good_ones(monkeypatch):
    """The kernel reuses the checks of tables equal, byte for byte, to ones that passed: tables that
    differ in one entry, given after the good ones, are checked afresh and refused."""
    n = 5000
    grads = jnp.ones(n)
    mu, nu = qz.constant((n,), 0.0, 8, 256, True), qz.constant((n,), 0.0, 8, 256, False)
    for _ in range(2):  # the second call finds the first's tables checked
        jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, mu, nu))
    good = qz.tables

    def corrupted(entry, value, message):
        def tables(bits, signed):
            parts = list(good(bits, signed))
            parts[entry] = parts[entry].copy()
            parts[entry][len(parts[entry]) // 2] = value
            return tuple(parts)

        monkeypatch.setattr(qz, "tables", tables)
        with pytest.raises(Exception, match=message):
            jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, mu, nu))
        monkeypatch.setattr(qz, "tables", good)

    corrupted(0, 200, "a key table entry is out of range")  # start: past the last magnitude
    corrupted(3, 3, "not a sorted code's")  # positive: an index off its rank
    jax.block_until_ready(kernels.quantized_adam_direction(HYPER, grads, mu, nu))  # the good tables still run


def test_the_native_step_differentiates_as_the_jnp_step(jnp_path):
    """Hypergradients through quantized Adam: the kernel has no derivative of its own, so the
    native step's is the jnp step's (and its value the kernel's). One step from a common state,
    so that both start from the same codes; each term of the sum agrees to float32's bound."""
    rng = np.random.default_rng(11)
    params = jnp.asarray(rng.standard_normal(5000), jnp.float32)
    q = adaptx.Quantized(8)
    tx = adaptx.adam(1e-2, mu_dtype=q, nu_dtype=q)  # its β₁, β₂ are traced state, set below
    state = tx.init(params)
    for _ in range(2):
        state = tx.update(wide(rng, (5000,)), state, params)[1]
    grads = jnp.asarray(rng.standard_normal(5000), jnp.float32)

    def objective(b1, b2, scale):
        u, _ = tx.update(grads * scale, adaptx.set_hyperparams(state, b1=b1, b2=b2), params)
        terms = u * params
        return jnp.sum(terms), jnp.sum(jnp.abs(terms))

    differentiate = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))
    assert kernels.DIRECTION_TARGET in differentiate.lower(0.9, 0.999, 1.0).as_text()
    (value, size), grads_got = differentiate(0.9, 0.999, 1.0)
    jnp_path()
    (want, _), grads_want = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))(0.9, 0.999, 1.0)
    bound = leaf_bound(jnp.float32, 1, *step_cost("adam"), implementations=2)
    assert abs(value - want) <= bound * size
    for got, expected in zip(grads_got, grads_want):
        assert abs(got - expected) <= bound * max(abs(float(expected)), size), (got, expected)


def test_inside_a_train_step_the_direction_is_written_over_the_gradient():
    """The gradient of a training step is a buffer XLA made for the step: the native call writes the
    direction over it, so the compiled step copies no param-sized array (as float32 Adam's)."""
    q = adaptx.Quantized(8)
    tx = adaptx.adam(1e-3, mu_dtype=q, nu_dtype=q)
    weights, batch = jnp.ones((256, 256)), (jnp.ones((64, 256)), jnp.ones((64, 256)))

    def step(w, s, xy):
        g = jax.grad(lambda w: jnp.mean(jnp.square(xy[0] @ w - xy[1])))(w)
        u, s = tx.update(g, s, w)
        return optax.apply_updates(w, u), s

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(weights, tx.init(weights), batch).compile().as_text()
    entry = compiled[compiled.index("ENTRY"):]
    calls = [line for line in entry.splitlines() if kernels.DIRECTION_TARGET in line]
    assert len(calls) == 1 and "f32[256,256]" in calls[0]
    assert "output_to_operand_aliasing={{0}: (1, {})" in calls[0]  # the direction over the gradient
    copies = [line for line in entry.splitlines() if "copy" in line.split("=", 1)[-1].split("(", 1)[0]
              and ("f32[256,256]" in line.split("=", 1)[-1][:40] or "f32[65536]" in line.split("=", 1)[-1][:40])]
    assert not copies, copies
