"""The one-pass kernel's quantized Adam (adaptx.Quantized moments) against update + apply_updates.

One step from a common state, so that the two paths start from the same codes: the params and
the moments before requantization are the float32 step either way (two float32 programs,
harness.leaf_bound); the requantized codes then agree except where the two paths' moments,
an ulp apart, fall on opposite sides of a midpoint between two codes, which moves a code by one
index in a few elements per 10⁴.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx._src import kernels, quantize as qz
from adaptx._src.fused import explain
from harness import leaf_bound, relative_error, step_cost

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the one-pass kernel is not built")

FORMATS = [(8, 8), (4, 4), (8, 4)]


def _state_after(tx, params, steps, rng):
    """A state with varied codes: a few plain steps on gradients over several decades."""
    state = tx.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-3, 1, p.shape),
                                                   p.dtype), params)
        state = tx.update(grads, state, params)[1]
    return state


@pytest.mark.parametrize("bits", FORMATS, ids=lambda b: f"{b[0]}-{b[1]}bit")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_one_pass_matches_two_steps(bits, dtype):
    rng = np.random.default_rng(sum(bits))
    # 5000·3 + 17 elements: a partial last block; "b" stays float32 (under min_size) and takes
    # the float32 kernel in the same step; adamw's decay exercises the decoupled loop.
    params = {"w": jnp.asarray(rng.standard_normal(15017), dtype), "b": jnp.asarray(rng.standard_normal(10), dtype)}
    tx = adaptx.adamw(1e-2, weight_decay=0.1, mu_dtype=adaptx.Quantized(bits[0]), nu_dtype=adaptx.Quantized(bits[1]))
    assert explain(tx, params) == "runs the one-pass kernel"
    state = _state_after(tx, params, 3, rng)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)

    def two_step(g, s, p):
        u, s = tx.update(g, s, p)
        return adaptx.apply_updates(p, u), s

    want = jax.jit(two_step)(grads, state, params)
    got = jax.jit(lambda g, s, p: adaptx.update_and_apply(tx, g, s, p))(grads, state, params)
    assert jax.tree.structure(got, is_leaf=qz.is_quantized) == jax.tree.structure(want, is_leaf=qz.is_quantized)
    bound = leaf_bound(dtype, 1, *step_cost("adamw"), implementations=2)
    for name in params:
        assert relative_error(got[0][name], want[0][name]) <= bound, name
    moments = (got[1].inner_state[0], want[1].inner_state[0])
    for field in ("mu", "nu"):
        g, w = getattr(moments[0], field)["w"], getattr(moments[1], field)["w"]
        assert qz.is_quantized(g) and (g.bits, g.signed) == (w.bits, w.signed)
        # the absmax is one float32 moment value of the block: an ulp-level deviation at most
        assert relative_error(g.scales, w.scales) <= rounding_bound_of_moment()
        codes = [np.asarray(qz.decode_indices(q)) for q in (g, w)]
        moved = codes[0] != codes[1]
        assert moved.mean() <= 1e-3 and np.all(np.abs(codes[0][moved] - codes[1][moved]) == 1)


def rounding_bound_of_moment():
    return leaf_bound(jnp.float32, 1, *step_cost("adam"), implementations=2)


def test_kernel_runs_quantized_adam_and_declines_the_rest_with_reasons():
    q = adaptx.Quantized(8)
    params = {"w": jnp.ones((64, 64))}
    assert explain(adaptx.adam(mu_dtype=q, nu_dtype=q), params) == "runs the one-pass kernel"
    assert explain(adaptx.adam(mu_dtype=adaptx.Quantized(4), nu_dtype=q), params) == "runs the one-pass kernel"
    message = explain(adaptx.adam(mu_dtype=q), params)
    assert message.startswith("falls back") and "one moment is quantized" in message
    message = explain(adaptx.rmsprop(1e-3, nu_dtype=q), params)
    assert message.startswith("falls back") and "quantized" in message


def test_native_size_checks_refuse_a_mismatched_moment():
    """A state whose codes do not cover the leaf's blocks is refused before any element is touched."""
    n = 5000
    params, grads = jnp.ones(n), jnp.ones(n)
    mu = qz.constant((n,), 0.0, 8, 256, True)
    nu = qz.constant((n,), 0.0, 8, 256, False)
    short = qz.QuantizedArray(mu.codes[:-1], mu.scales, mu.shape, 8, 256, True)  # one block too few codes
    hyper = dict(neg_lr=-1e-3, b1=0.9, b1c=0.1, b2=0.999, b2c=1e-3, eps=1e-8, inv_bc1=10.0, inv_bc2=1000.0)
    kernels.quantized_adam_step(hyper, params, grads, mu, nu)  # the well-formed call runs
    with pytest.raises(Exception, match="does not hold its leaf's blocks"):
        jax.block_until_ready(kernels.quantized_adam_step(hyper, params, grads, short, nu))
    with pytest.raises(ValueError, match="do not hold a leaf"):
        kernels.quantized_adam_step(hyper, jnp.ones(n + 1), jnp.ones(n + 1), mu, nu)
