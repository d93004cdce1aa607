"""Sweep speed-up and monitor overhead, written to benchmarks/RESULTS_sweeps.md.

    python benchmarks/sweep_bench.py [--repeats 3] [--steps 200]

1. Sweeping Adam's learning rate over 16 and 64 settings on the digits MLP
   (64-64-10, minibatches of 64): ``adaptx.sweep`` (one vmapped program)
   against a loop of separate runs. Each side is timed cold (a fresh
   optimizer, so compiling is included, as a user meets it) and warm (the
   compiled program reused; the sequential loop changes the learning rate
   with ``adaptx.set_hyperparams``, so it compiles once too).
2. The cost of ``adaptx.monitor``: a jitted Adam step on a 784-512-512-10 MLP
   (batches of 128 and 512), without the wrapper, with it, and with it keeping
   norms only.

Times are medians over repeats: the machine may be shared and noisy.
"""
import argparse
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaptx
from adaptx_demo import digits

OUT = pathlib.Path(__file__).with_name("RESULTS_sweeps.md")


def median_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def separate_trainer(tx, stream, steps: int):
    """One jitted run of ``steps`` steps: the sequential baseline's unit."""
    @jax.jit
    def train(params, state):
        def step(carry, t):
            params, state = carry
            loss, grads = jax.value_and_grad(digits.cross_entropy)(params, digits.minibatch(stream, t))
            updates, state = tx.update(grads, state, params)
            return (adaptx.apply_updates(params, updates), state), loss

        return jax.lax.scan(step, (params, state), jnp.arange(steps))

    return train


def sweep_speedup(n: int, steps: int, repeats: int) -> dict:
    data = digits.load()
    stream = ((data.x_train, data.y_train), digits.batch_schedule(len(data.y_train), steps, 64))
    params = digits.init_mlp()
    rates = [float(lr) for lr in np.logspace(-4, 0, n)]

    def vmapped(tx):
        return lambda: adaptx.sweep(
            digits.cross_entropy, tx, params, stream, {"learning_rate": rates}, steps=steps,
            batch_fn=digits.minibatch, progress=False,
        ).losses

    def sequential_cold():
        runs = []
        for lr in rates:
            tx = adaptx.adam(lr)
            runs.append(separate_trainer(tx, stream, steps)(params, tx.init(params)))
        return runs

    tx = adaptx.adam()
    train = separate_trainer(tx, stream, steps)
    state = tx.init(params)

    def sequential_warm():
        return [train(params, adaptx.set_hyperparams(state, learning_rate=lr)) for lr in rates]

    warm_sweep = vmapped(tx)
    jax.block_until_ready((warm_sweep(), sequential_warm()))  # compile the warm programs once
    return {
        "settings": n,
        "vmapped cold": median_time(lambda: vmapped(adaptx.adam())(), repeats),
        "sequential cold": median_time(sequential_cold, repeats),
        "vmapped warm": median_time(warm_sweep, repeats),
        "sequential warm": median_time(sequential_warm, repeats),
    }


def monitor_overhead(batch: int, repeats: int, steps: int = 50) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    params = digits.init_mlp((784, 512, 512, 10))

    def step_time(tx):
        @jax.jit
        def step(params, state):
            grads = jax.grad(digits.cross_entropy)(params, (x, y))
            updates, state = tx.update(grads, state, params)
            return adaptx.apply_updates(params, updates), state

        carry = (params, tx.init(params))
        jax.block_until_ready(step(*carry))

        def run():
            nonlocal carry
            for _ in range(steps):
                carry = step(*carry)
            return carry

        return run

    runs = {
        "plain": step_time(adaptx.adam(1e-3)),
        "monitored": step_time(adaptx.monitor(adaptx.adam(1e-3))),
        "norms only": step_time(adaptx.monitor(adaptx.adam(1e-3), per_coordinate=False)),
    }
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drifting load hits all alike
        for name, run in runs.items():
            times[name].append(median_time(run, 1) / steps)
    return {"batch": batch, **{name: statistics.median(values) for name, values in times.items()}}


def report(sweeps: list, overheads: list, repeats: int, steps: int, load: tuple) -> str:
    lines = [
        "## Sweeps and diagnostics (benchmarks/sweep_bench.py)",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}),"
        f" jax {jax.__version__} on {jax.devices()[0].platform}; load average {load[0]:.1f} before and"
        f" {load[1]:.1f} after the run: the machine was shared, so these are medians of {repeats}"
        " repeats and the ratios are the figures to quote.",
        "",
        f"### Learning-rate sweep of Adam: digits MLP 64-64-10, {steps} steps, batch 64",
        "",
        "Cold: a fresh optimizer, compile included (what a user meets). Warm: programs already"
        " compiled (the sequential loop reuses one program through `adaptx.set_hyperparams`).",
        "",
        "| settings | vmapped cold (s) | sequential cold (s) | speed-up cold | vmapped warm (s) |"
        " sequential warm (s) | speed-up warm |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sweeps:
        lines.append(
            f"| {r['settings']} | {r['vmapped cold']:.2f} | {r['sequential cold']:.2f}"
            f" | {r['sequential cold'] / r['vmapped cold']:.1f}× | {r['vmapped warm']:.3f}"
            f" | {r['sequential warm']:.3f} | {r['sequential warm'] / r['vmapped warm']:.1f}× |"
        )
    lines += [
        "",
        "### `adaptx.monitor` overhead: jitted Adam step, MLP 784-512-512-10 (670k parameters)",
        "",
        "`monitor(tx)` keeps every per-coordinate statistic; `per_coordinate=False` keeps the norms"
        " (and their ratio) only.",
        "",
        "| batch | without monitor (ms) | `monitor(tx)` (ms) | overhead | norms only (ms) | overhead |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for o in overheads:
        lines.append(
            f"| {o['batch']} | {o['plain'] * 1e3:.2f} | {o['monitored'] * 1e3:.2f}"
            f" | {o['monitored'] / o['plain'] - 1:+.0%} | {o['norms only'] * 1e3:.2f}"
            f" | {o['norms only'] / o['plain'] - 1:+.0%} |"
        )
    lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    sweeps = [sweep_speedup(n, args.steps, args.repeats) for n in (16, 64)]
    overheads = [monitor_overhead(batch, max(args.repeats, 11)) for batch in (128, 512)]
    text = report(sweeps, overheads, args.repeats, args.steps, (load_before, os.getloadavg()[0]))
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
