"""Step time of quantized Adam (adaptx.Quantized moments) against float32 Adam and optax.adam.

    python -m benchmarks.quantized_step [--quick] [--out DIR] [--size-log2 N] [--reps R]

One float32 leaf of 2**24 elements (issue 12's size), donated, jitted. Two ways to step:

- plain: ``tx.update`` then ``optax.apply_updates`` (what flax/equinox users run). With quantized
  moments ``scale_by_adam`` runs one kernel call per leaf on CPU (dequantize, step, requantize
  per block, writing the direction), then XLA scales it and adds it to the param;
- one-pass: ``adaptx.update_and_apply``, which runs the CPU kernel (for quantized moments:
  dequantize, step and requantize per block, in one pass over the leaf, the param in place).

Two reference rows show what the plain path pays here that the one-pass path does not: the
gradient is the step's argument, so the direction (64 MB) needs a buffer of its own, which XLA's
CPU runtime maps fresh and zero-filled every step. A second table times a training step, where
the gradient comes from backprop and the direction is written over it, as the optimizer's share
of the step (step less loss-and-gradient).

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


def donated(step, tx, params, data):
    """A run of ``step(params, state, data) -> (params, state)``, jitted with params and state donated."""
    jitted = jax.jit(step, donate_argnums=(0, 1))
    box = [params + 0, tx.init(params)]

    def run():
        box[0], box[1] = jitted(box[0], box[1], data)
        jax.block_until_ready(box)

    return run


def runner(tx, one_pass, params, grads):
    def step(p, s, g):
        if one_pass:
            return adaptx.update_and_apply(tx, g, s, p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return donated(step, tx, params, grads)


REFERENCES = {"reference: y = 2·x into a fresh buffer": False, "reference: x ← 2·x in place (donated)": True}


def reference(in_place, x):
    """y = 2·x over the leaf: into a buffer XLA allocates for the call, or into x's own (donated)."""
    jitted = jax.jit(lambda x: x * 2.0, donate_argnums=(0,) if in_place else ())
    box = [x + 0]

    def run():
        out = jax.block_until_ready(jitted(box[0]))
        if in_place:
            box[0] = out

    return run


def train_runner(tx, weights, batch):
    """A flax-style training step of a linear layer: the gradient from backprop (a dot, materialized),
    then ``tx.update`` and ``optax.apply_updates``; ``tx=None`` times the loss-and-gradient alone."""
    def loss(w, xy):
        return jnp.mean(jnp.square(xy[0] @ w - xy[1]))

    if tx is None:
        jitted = jax.jit(jax.grad(loss))
        return lambda: jax.block_until_ready(jitted(weights, batch))

    def step(w, s, xy):
        u, s = tx.update(jax.grad(loss)(w, xy), s, w)
        return optax.apply_updates(w, u), s

    return donated(step, tx, weights, batch)


TRAIN = "loss and gradient alone"


def train_contenders():
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    return {TRAIN: None, "optax adam": optax.adam(1e-3), "adaptx adam float32": adaptx.adam(1e-3),
            "adaptx adam 8-bit": adaptx.adam(1e-3, mu_dtype=q8, nu_dtype=q8),
            "adaptx adam 4-bit": adaptx.adam(1e-3, mu_dtype=q4, nu_dtype=q4)}


def measure_train(n, reps, batch_size=64):
    """{contender: step ms, optimizer share (step − loss and gradient), share over float32 Adam's}."""
    side = int(round(n ** 0.5))
    rng = np.random.default_rng(1)
    weights = jnp.asarray(rng.standard_normal((side, side)) * 0.01, jnp.float32)
    batch = tuple(jnp.asarray(rng.standard_normal((batch_size, side)), jnp.float32) for _ in range(2))
    runs = {name: train_runner(tx, weights, batch) for name, tx in train_contenders().items()}
    medians = {name: median_ms(t) for name, t in interleaved(runs, reps).items()}
    shares = {name: ms - medians[TRAIN] for name, ms in medians.items()}
    return {name: {"ms": ms, "share_ms": shares[name], "share_vs_float32": shares[name] / shares["adaptx adam float32"]}
            for name, ms in medians.items()}


def measure(n, reps):
    """{contender: its median and ratios}, and the reference rows' medians, from one interleaved run."""
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal(n, np.float32))
    grads = jnp.asarray(rng.standard_normal(n, np.float32))
    rows = contenders()
    runs = {name: runner(tx, fused, params, grads) for name, (tx, fused) in rows.items()}
    runs.update({name: reference(in_place, params) for name, in_place in REFERENCES.items()})
    medians = {name: median_ms(t) for name, t in interleaved(runs, reps).items()}
    result = {name: {"ms": medians[name], "vs_float32_plain": medians[name] / medians[BASE],
                     "vs_float32_one_pass": medians[name] / medians["adaptx adam float32, one-pass"]}
              for name in rows}
    return result, {name: medians[name] for name in REFERENCES}


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
    lines += ["", "The cost of a fresh buffer per step (what the plain path's direction pays):", "",
              "| reference | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in meta["references"].items()]
    train = meta["train"]
    side = int(round(meta["n"] ** 0.5))
    lines += ["", f"In a training step (a {side}×{side} linear layer, batch 64, mean squared error; the"
              " gradient comes from a dot, so it is a buffer for float32 Adam too, and the quantized"
              " direction is written over it). The optimizer's share is the step less the loss and"
              f" gradient alone, medians of {2 * meta['reps'] + 1} turns:", "",
              "| step | ms | optimizer share, ms | share vs float32 Adam's |", "|---|---|---|---|"]
    for name, row in train.items():
        share = "—" if name == TRAIN else f"{row['share_ms']:.1f}"
        ratio = "—" if name == TRAIN else f"{row['share_vs_float32']:.2f}×"
        lines.append(f"| {name} | {row['ms']:.1f} | {share} | {ratio} |")
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
    result, meta["references"] = measure(n, reps)
    meta["train"] = measure_train(n, 2 * reps + 1)  # shares are differences: more turns
    meta["load_end"] = load()
    text = render(result, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantized_step.md").write_text(text)
    (args.out / "quantized_step.json").write_text(json.dumps({"meta": meta, "results": result}, indent=1))
    print(text)
    return result, args.out


if __name__ == "__main__":
    main()
