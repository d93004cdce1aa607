"""Quantized moments on 8 simulated CPU devices; run by tests/distributed/test_sharding.py in a process of its own.

Blocks never straddle shards: each device's codes and scales are exactly the blocks of its
own shard of the param, checked by recomputing every device's absmax from its local shard of
the moment; the state keeps its layout through jitted steps; the numbers equal one device's,
stepping the same (per-shard blocked) state; Adam's native step runs each device's shards where
they are, without a collective. Prints ``PASS <check>``; a failure raises.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (the flag above must be set first)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import adaptx  # noqa: E402
from adaptx._src import kernels, quantize as qz  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import assert_trees_within, step_cost  # noqa: E402

# Both axes sharded, the trailing axis only, the leading only (with a partial last block per
# shard: 8·100 elements a shard), and a small replicated leaf that stays float32.
LAYOUT = {"w": ((64, 256), P("data", "model"), (2, 4)), "t": ((16, 1024), P(None, "model"), (1, 4)),
          "v": ((8, 800), P(("data", "model"), None), (8, 1)), "b": ((16,), P(), ()),
          "u": ((96, 80), P(), ())}  # a replicated leaf big enough to quantize: blocked whole, on every device
QUANTIZED = [k for k in sorted(LAYOUT) if np.prod(LAYOUT[k][0]) >= 4096]


# jitted: eagerly every op of these would compile a program of its own
dequantize, decode_indices = jax.jit(qz.dequantize), jax.jit(qz.decode_indices)


def quantized(tree):
    return [n for n in jax.tree.leaves(tree, is_leaf=qz.is_quantized) if qz.is_quantized(n)]


def check(axis_type):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    rng = np.random.default_rng(0)
    params = {k: jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.float32), NamedSharding(mesh, spec))
              for k, (shape, spec, _) in LAYOUT.items()}
    grads = [jax.tree.map(lambda p: jax.device_put(jnp.asarray(rng.standard_normal(p.shape) * 10.0 ** rng.uniform(
        -3, 1, p.shape), jnp.float32), p.sharding), params) for _ in range(3)]
    # a signed 8-bit and an unsigned 4-bit moment: both codes, both packings
    for name, tx in [("adam 8/4-bit", adaptx.adam(1e-2, mu_dtype=adaptx.Quantized(8), nu_dtype=adaptx.Quantized(4)))]:
        for init in ("eager", "jit"):
            state = tx.init(params) if init == "eager" else jax.jit(tx.init)(params)
            if axis_type == AxisType.Auto and init == "jit":
                continue  # under jit an Auto-sharded tracer does not know its sharding: see shard_grid
            step = jax.jit(lambda p, s, g: (lambda u, s: (adaptx.apply_updates(p, u), s))(*tx.update(g, s, p)))
            if kernels.available():  # Adam's native step, each device on its own shards: no collective
                compiled = step.lower(params, state, grads[0]).compile().as_text()
                assert compiled.count(kernels.DIRECTION_TARGET) == 4, (name, init)  # w, t, v, u
                assert not any(c in compiled for c in ("all-gather", "all-to-all", "all-reduce",
                                                       "collective-permute")), (name, init)
            p, s = params, state
            for g in grads:
                p, s = step(p, s, g)
            for q, leaf in zip(quantized(s), QUANTIZED * 2):
                shape, spec, grid = LAYOUT[leaf]
                assert q.grid == grid, (name, leaf, q.grid)
                if not grid:
                    continue
                want = NamedSharding(mesh, P(*(tuple(spec) + (None,) * (2 - len(spec))), None, None))
                assert q.codes.sharding.is_equivalent_to(want, q.codes.ndim), (name, leaf, q.codes.sharding)
                assert q.scales.sharding.is_equivalent_to(
                    NamedSharding(mesh, P(*want.spec[:-1])), q.scales.ndim), (name, leaf, q.scales.sharding)
                # each device's scales are the absmax of its own param shard's blocks
                moment = dequantize(q)
                local = {s.device: np.asarray(s.data) for s in moment.addressable_shards}
                for shard in q.scales.addressable_shards:
                    flat = local[shard.device].ravel()
                    blocks = np.pad(flat, (0, -flat.size % q.block_size)).reshape(-1, q.block_size)
                    # a block's largest |value| is its absmax × the code's value at ±1: 1, or for a
                    # negative absmax element in a signed code (no −1 in it) the most negative value
                    ratio = np.abs(blocks).max(axis=1) / np.asarray(shard.data).ravel()
                    ends = np.unique(np.abs(qz.code(q.bits, q.signed)[[0, -1]]))
                    assert np.all(np.isclose(ratio[:, None], ends, rtol=1e-6, atol=0).any(axis=1)), (name, leaf)
            # one device, the same per-shard blocked state: the same numbers
            def one_device(tree):  # through NumPy: drops the mesh, explicit axes included
                return jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), tree)

            p1, s1 = one_device((params, state))
            for g in grads:
                p1, s1 = step(p1, s1, one_device(g))
            assert_trees_within(p, p1, 3, *step_cost("adam"), what=f"{name} ({init}) params ")
            for a, b in zip(quantized(s), quantized(s1)):
                codes = [np.asarray(decode_indices(x)).astype(int) for x in (a, b)]
                moved = codes[0] != codes[1]  # an ulp apart on a midpoint: one index
                assert moved.mean() <= 1e-3 and np.all(np.abs(codes[0] - codes[1])[moved] == 1), name
    print(f"PASS quantized blocks follow the shards ({axis_type.name})")


def check_sweep():
    """A sweep (jax.vmap) of quantized Adam over several devices: the native step, once per member."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal((64, 80)), jnp.float32)}
    data = {"x": jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)}

    def loss(p, batch):
        return jnp.mean(jnp.square(batch["x"] @ p["w"] - 1.0))

    q = adaptx.Quantized(8)
    rates = [1e-3, 1e-2]
    swept = adaptx.sweep(loss, adaptx.adam(1e-3, mu_dtype=q, nu_dtype=q), params, data, {"learning_rate": rates},
                         steps=4, progress=False)
    for i, rate in enumerate(rates):
        tx = adaptx.adam(rate, mu_dtype=q, nu_dtype=q)
        step = jax.jit(lambda p, s: (lambda u, s: (adaptx.apply_updates(p, u), s))(*tx.update(jax.grad(loss)(p, data), s, p)))
        p, s = params, tx.init(params)
        for _ in range(4):
            p, s = step(p, s)
        assert_trees_within(jax.tree.map(lambda x: x[i], swept.params), p, 4, *step_cost("adam"), what="sweep ")
    print("PASS a quantized sweep over several devices")


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    for axis in sys.argv[1:] or ["auto", "explicit"]:
        check({"auto": AxisType.Auto, "explicit": AxisType.Explicit}[axis])
    check_sweep()
