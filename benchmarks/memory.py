"""Memory-efficient state (issue 12): state bytes, quantization error, step time and quality.

    python -m benchmarks.memory [--quick]

Measures, on this machine, what docs/memory.md reports:

- state bytes per parameter, from the state's arrays (jax.eval_shape: nothing is allocated);
- the round-trip error of each code per block, max and RMS relative to the block's absmax,
  on log-uniform magnitudes over 8 decades (as moments are);
- the step time of 8-bit Adam against float32 Adam on one 2**24 leaf, plain path
  (jit of update + apply_updates; the one-pass kernel declines quantized moments anyway);
- final training loss and test accuracy on the digits MLP (64-128-128-10, tanh, minibatches
  of 64) for float32, 8-bit and 4-bit Adam and for Adafactor.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import digits
from adaptx._src import quantize as qz


def bytes_per_parameter():
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    matrix = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
    rows = {
        "adam float32": adaptx.adam(),
        "adam 8-bit": adaptx.adam(mu_dtype=q8, nu_dtype=q8),
        "adam 4-bit": adaptx.adam(mu_dtype=q4, nu_dtype=q4),
        "adafactor": adaptx.adafactor(),
        "adafactor + 8-bit momentum": adaptx.adafactor(momentum=0.9, mu_dtype=q8),
    }
    return {name: qz.state_bytes(jax.eval_shape(tx.init, matrix)) / matrix.size for name, tx in rows.items()}


def round_trip_errors(n=256 * 4096, seed=0):
    """quantize.round_trip_error over log-uniform magnitudes: the worst block's max and the RMS over blocks."""
    rng = np.random.default_rng(seed)
    out = {}
    for bits in (8, 4):
        for signed in (True, False):
            x = 10.0 ** rng.uniform(-8, 0, n)
            x = (x * rng.choice([-1, 1], n) if signed else x).astype(np.float32)
            error = qz.round_trip_error(x, bits, 256, signed)
            out[f"{bits}-bit {'signed' if signed else 'unsigned'}"] = {
                "max": float(error["max"].max()), "rms": float(np.sqrt(np.mean(error["rms"] ** 2))),
                "resolution": qz.resolution(bits, signed)}
    return out


def step_times(size=2 ** 24, repeats=5):
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.standard_normal(size, np.float32))
    grads = jnp.asarray(rng.standard_normal(size, np.float32))
    q = adaptx.Quantized(8)
    out = {}
    for name, tx in (("adam float32", adaptx.adam()), ("adam 8-bit", adaptx.adam(mu_dtype=q, nu_dtype=q))):
        def plain(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return adaptx.apply_updates(p, u), s

        step = jax.jit(plain, donate_argnums=(0, 1))
        p, s = params + 0, tx.init(params)
        p, s = step(p, s, grads)
        jax.block_until_ready(p)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            p, s = step(p, s, grads)
            jax.block_until_ready((p, s))
            times.append(time.perf_counter() - start)
        out[name] = float(np.median(times))
    out["ratio"] = out["adam 8-bit"] / out["adam float32"]
    return out


def digits_quality(steps=400, seed=0):
    data = digits.load()
    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    schedule = digits.batch_schedule(len(data.y_train), steps, batch_size=64, seed=seed)
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    optimizers = {
        "adam float32": adaptx.adam(3e-3),
        "adam 8-bit": adaptx.adam(3e-3, mu_dtype=q8, nu_dtype=q8),
        "adam 4-bit": adaptx.adam(3e-3, mu_dtype=q4, nu_dtype=q4),
        "adafactor": adaptx.adafactor(),
        "adafactor (η = 0.1)": adaptx.adafactor(0.1),
    }
    out = {}
    for name, tx in optimizers.items():
        params = digits.init_mlp((64, 128, 128, 10), seed=seed)

        @jax.jit
        def run(params, tx=tx):
            def step(carry, rows):
                p, s = carry
                loss, g = jax.value_and_grad(digits.cross_entropy)(p, (train[0][rows], train[1][rows]))
                u, s = tx.update(g, s, p)
                return (adaptx.apply_updates(p, u), s), loss

            (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), schedule)
            return p, losses

        p, losses = run(params)
        out[name] = {"train_loss": float(digits.cross_entropy(p, train)),
                     "test_accuracy": float(digits.accuracy(p, test)),
                     "minibatch_loss_last50": float(np.mean(np.asarray(losses)[-50:]))}
    base = out["adam float32"]["train_loss"]
    for row in out.values():
        row["vs_float32"] = row["train_loss"] / base - 1
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 2**20 leaf and 100 digits steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = {
        "bytes_per_parameter": bytes_per_parameter(),
        "round_trip_error": round_trip_errors(),
        "step_time_s": step_times(2 ** 20 if args.quick else 2 ** 24),
        "digits": digits_quality(100 if args.quick else 400),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
