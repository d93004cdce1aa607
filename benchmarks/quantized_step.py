"""Step time of quantized Adam (adaptx.Quantized moments) against float32 Adam and optax.adam.

    python -m benchmarks.quantized_step [--quick] [--out DIR] [--size-log2 N] [--reps R]

One float32 leaf of 2**24 elements (issue 12's size), donated, jitted. Two ways to step:

- plain: ``tx.update`` then ``optax.apply_updates`` (what flax/equinox users run); quantized
  moments are dequantized, updated and requantized by XLA, in several passes;
- one-pass: ``adaptx.update_and_apply``, which runs the CPU kernel (for quantized moments:
  dequantize, step and requantize per block, in one pass over the leaf).

Contenders take turns (benchmarks/timing.interleaved), so a burst of load from other
processes lands on all of them; the medians' ratios to float32 Adam on the plain path are
what the report gives, since only ratios within one run mean anything on a shared machine.
Writes ``quantized_step.md`` and ``quantized_step.json`` into ``--out`` (default: this folder;
``--quick``, a smoke run at 2**12 elements, writes into a temporary folder and refuses this one).
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adaptx
from adaptx._src import kernels
from benchmarks.run import load, machine
from benchmarks.timing import interleaved, median_ms, results_folder

BASE = "adaptx adam float32, plain"


def contenders():
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    adam = {"float32": adaptx.adam(1e-3), "8-bit": adaptx.adam(1e-3, mu_dtype=q8, nu_dtype=q8),
            "4-bit": adaptx.adam(1e-3, mu_dtype=q4, nu_dtype=q4)}
    rows = {"optax adam, plain": (optax.adam(1e-3), False)}
    for name, tx in adam.items():
        rows[f"adaptx adam {name}, plain"] = (tx, False)
        rows[f"adaptx adam {name}, one-pass"] = (tx, True)
    return rows


def runner(tx, one_pass, params, grads):
    def step(p, s, g):
        if one_pass:
            return adaptx.update_and_apply(tx, g, s, p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    jitted = jax.jit(step, donate_argnums=(0, 1))
    box = [params + 0, tx.init(params)]

    def run():
        box[0], box[1] = jitted(box[0], box[1], grads)
        jax.block_until_ready(box)

    return run


def measure(n, reps):
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal(n, np.float32))
    grads = jnp.asarray(rng.standard_normal(n, np.float32))
    rows = contenders()
    times = interleaved({name: runner(tx, fused, params, grads) for name, (tx, fused) in rows.items()}, reps)
    medians = {name: median_ms(t) for name, t in times.items()}
    return {name: {"ms": ms, "vs_float32_plain": ms / medians[BASE],
                   "vs_float32_one_pass": ms / medians["adaptx adam float32, one-pass"]}
            for name, ms in medians.items()}


def render(result, meta) -> str:
    lines = [
        "# Quantized Adam step time (issue 12)", "",
        f"`{meta['command']}` on {meta['machine']}; {meta['versions']}; load {meta['load_start']} → "
        f"{meta['load_end']}; {meta['date']}.", "",
        f"One float32 leaf of {meta['n']} elements, donated, jitted; median of {meta['reps']} interleaved steps.",
        "Ratios are to adaptx float32 Adam on the plain path and on the one-pass path; the issue's target is"
        " 8-bit ≤ 1.5× float32 on the plain path.", "",
        "| step | ms | vs float32 plain | vs float32 one-pass |", "|---|---|---|---|",
    ]
    for name, row in result.items():
        lines.append(f"| {name} | {row['ms']:.1f} | {row['vs_float32_plain']:.2f}× | {row['vs_float32_one_pass']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2**12 elements, 3 repetitions (smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size-log2", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    args.out = results_folder(args.out, args.quick, "quantized-step")
    n = 1 << (args.size_log2 or (12 if args.quick else 24))
    reps = args.reps or (3 if args.quick else 15)
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command="python -m benchmarks.quantized_step " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=machine(), load_start=load(), n=n, reps=reps,
                versions=f"jax {jax.__version__}, optax {optax.__version__}"
                         f" (one-pass kernel {'built' if kernels.available() else 'unavailable'})")
    result = measure(n, reps)
    meta["load_end"] = load()
    text = render(result, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantized_step.md").write_text(text)
    (args.out / "quantized_step.json").write_text(json.dumps({"meta": meta, "results": result}, indent=1))
    print(text)
    return result, args.out


if __name__ == "__main__":
    main()
