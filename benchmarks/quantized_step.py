"""Step time of quantized Adam (adaptx.Quantized moments) against float32 Adam and optax.adam.

    python -m benchmarks.quantized_step [--quick] [--out DIR] [--size-log2 N] [--reps R]

Issue 12's size, a float32 leaf of 2**24 elements, stepped on the plain path (``tx.update`` then
``optax.apply_updates``, what flax, equinox and TrainState run). With quantized moments
``scale_by_adam`` runs one kernel call per leaf on CPU (dequantize, step, requantize per block,
writing the direction over the gradient), then XLA scales the direction and adds it to the param.

First, a training step as users run it: a 4096×4096 linear layer whose gradient comes from
backprop inside the jitted step (batch 8); the optimizer's share is the step less the loss and
gradient alone. Then the same with 48 layers of 256×256, where each quantized leaf's kernel call
has fixed costs.

Then the leaf alone, the gradient a jit argument, two ways: plain, and one-pass
(``adaptx.update_and_apply``: the param in place). An argument cannot be written over, so there the
direction needs a 64 MB buffer of its own, which XLA's CPU runtime allocates with malloc every
step; glibc maps blocks that large fresh and zero-filled each time. Two reference rows time that
buffer alone, and the same rows are timed again in a child process whose glibc keeps freed memory
(``KEEP_FREED`` below).

Contenders take turns (benchmarks/timing.interleaved), so a burst of load from other processes
lands on all of them; only ratios within one run mean anything on a shared machine. Writes
``quantized_step.md`` and ``quantized_step.json`` into ``--out`` (default: this folder; ``--quick``,
a smoke run at 2**12 elements, writes into a temporary folder and refuses this one).
"""
import argparse
import datetime
import json
import os
import subprocess
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
TRAIN = "loss and gradient alone"
BATCH = 8  # small, so that the optimizer's share is a large part of the step (a share is a difference)
MANY_LEAVES = (48, 256 * 256)  # layers, parameters each: the many-leaves training step (full size)
# glibc: one arena for every thread, no block mapped on its own, none handed back: a freed 64 MB
# block is reused by the next step instead of mapped and zero-filled anew.
KEEP_FREED = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"
WAYS = ("plain", "one-pass")


def contenders():
    """{row: (tx, way)} for the leaf with its gradient a jit argument."""
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    adam = {"float32": adaptx.adam(1e-3), "8-bit": adaptx.adam(1e-3, mu_dtype=q8, nu_dtype=q8),
            "4-bit": adaptx.adam(1e-3, mu_dtype=q4, nu_dtype=q4)}
    rows = {"optax adam, plain": (optax.adam(1e-3), "plain")}
    for name, tx in adam.items():
        rows.update({f"adaptx adam {name}, {way}": (tx, way) for way in WAYS})
    return rows


def donated(step, tx, params, data):
    """A run of ``step(params, state, data) -> (params, state)``, jitted with params and state donated.

    (Donating the gradient too would not help: jax donates only a buffer some output can take.)
    """
    jitted = jax.jit(step, donate_argnums=(0, 1))
    box = [jax.tree.map(lambda x: x + 0, params), tx.init(params)]

    def run():
        box[0], box[1] = jitted(box[0], box[1], data)
        jax.block_until_ready(box)

    return run


def runner(tx, way, params, grads):
    def step(p, s, g):
        if way == "one-pass":
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
    """A flax-style training step of linear layers side by side (``weights``: a list of square
    matrices, all fed ``batch``): the gradient from backprop (a dot per layer, materialized), then
    ``tx.update`` and ``optax.apply_updates``; ``tx=None`` times the loss-and-gradient alone."""
    def loss(ws, xy):
        return sum(jnp.mean(jnp.square(xy[0] @ w - xy[1])) for w in ws)

    if tx is None:
        jitted = jax.jit(jax.grad(loss))
        return lambda: jax.block_until_ready(jitted(weights, batch))

    def step(w, s, xy):
        u, s = tx.update(jax.grad(loss)(w, xy), s, w)
        return optax.apply_updates(w, u), s

    return donated(step, tx, weights, batch)


def train_contenders():
    q8, q4 = adaptx.Quantized(8), adaptx.Quantized(4)
    return {TRAIN: None, "optax adam": optax.adam(1e-3), "adaptx adam float32": adaptx.adam(1e-3),
            "adaptx adam 8-bit": adaptx.adam(1e-3, mu_dtype=q8, nu_dtype=q8),
            "adaptx adam 4-bit": adaptx.adam(1e-3, mu_dtype=q4, nu_dtype=q4)}


def measure_train(n, reps, layers=1, batch_size=BATCH):
    """{contender: step ms, optimizer share, share over float32 Adam's}, for ``layers`` square layers
    of ``n`` parameters each.

    A share is the median over turns of (the step − the loss and gradient alone, in the same turn):
    pairing the two within a turn cancels load that drifts from turn to turn.
    """
    side = int(round(n ** 0.5))
    rng = np.random.default_rng(1)
    weights = [jnp.asarray(rng.standard_normal((side, side)) * 0.01, jnp.float32) for _ in range(layers)]
    batch = tuple(jnp.asarray(rng.standard_normal((batch_size, side)), jnp.float32) for _ in range(2))
    runs = {name: train_runner(tx, weights, batch) for name, tx in train_contenders().items()}
    times = interleaved(runs, reps)
    medians = {name: median_ms(t) for name, t in times.items()}
    shares = {name: median_ms([a - b for a, b in zip(t, times[TRAIN])]) for name, t in times.items()}
    return {name: {"ms": ms, "share_ms": shares[name], "share_vs_float32": shares[name] / shares["adaptx adam float32"]}
            for name, ms in medians.items()}


def measure(n, reps):
    """{row: {"ms", "vs_float32_plain", "vs_float32_one_pass"}} for the leaf, the reference rows included."""
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.standard_normal(n, np.float32))
    grads = jnp.asarray(rng.standard_normal(n, np.float32))
    runs = {name: runner(tx, way, params, grads) for name, (tx, way) in contenders().items()}
    runs.update({name: reference(in_place, params) for name, in_place in REFERENCES.items()})
    medians = {name: median_ms(t) for name, t in interleaved(runs, reps).items()}
    return {name: {"ms": ms, "vs_float32_plain": ms / medians[BASE],
                   "vs_float32_one_pass": ms / medians["adaptx adam float32, one-pass"]}
            for name, ms in medians.items()}


def measure_keeping_freed(n, reps):
    """:func:`measure` in a child process whose glibc keeps freed memory (``KEEP_FREED``)."""
    env = {**os.environ, "GLIBC_TUNABLES": KEEP_FREED}
    out = subprocess.run([sys.executable, "-m", "benchmarks.quantized_step", "--leaf-only",
                          "--size-log2", str(n.bit_length() - 1), "--reps", str(reps)],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def render(result, meta) -> str:
    train, kept, many = meta["train"], meta["keeping_freed"], meta["many_leaves"]
    side = int(round(meta["n"] ** 0.5))
    lines = [
        "# Quantized Adam step time (issue 12)", "",
        f"`{meta['command']}` on {meta['machine']}; {meta['versions']}; load {meta['load_start']} → "
        f"{meta['load_end']}; {meta['date']}.", "",
        "The issue's target: 8-bit Adam's step ≤ 1.5× float32 Adam's on the plain path, one leaf of"
        f" {meta['n']} elements.", "",
        f"## The plain path in a training step ({side}×{side} linear layer, batch {BATCH})", "",
        "The gradient comes from backprop inside the jitted step (a dot, so a buffer of its own for every"
        " optimizer; the quantized direction is written over it). The optimizer's share is the step less"
        f" the loss and gradient alone in the same turn, the median over {4 * meta['reps'] + 1} interleaved turns:", "",
    ]

    def shares(rows):
        lines.extend(["| step | ms | optimizer share, ms | share vs float32 Adam's |", "|---|---|---|---|"])
        for name, row in rows.items():
            share = "—" if name == TRAIN else f"{row['share_ms']:.1f}"
            ratio = "—" if name == TRAIN else f"{row['share_vs_float32']:.2f}×"
            lines.append(f"| {name} | {row['ms']:.1f} | {share} | {ratio} |")

    shares(train)
    layers, each = meta["many"]
    lines += ["", f"The same with {layers} layers of {int(each ** 0.5)}×{int(each ** 0.5)} (a kernel call per"
              " quantized leaf, each with its fixed costs):", ""]
    shares(many)
    lines += [
        "", "## The leaf alone, its gradient a jit argument", "",
        f"Params and state donated; medians of {meta['reps']} interleaved steps. The last two columns rerun"
        " the same rows in a child process whose glibc keeps freed memory"
        f" (`GLIBC_TUNABLES={KEEP_FREED}`): XLA's CPU runtime allocates each step's buffers with malloc,"
        " and glibc otherwise maps a 64 MB block fresh and zero-filled every time (the reference rows).", "",
        "| step | ms | vs float32 plain | vs float32 one-pass | glibc keeping freed memory: ms | vs float32 plain |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result.items():
        other = kept[name]
        ratios = ("", "") if name in REFERENCES else (f"{row['vs_float32_plain']:.2f}×", f"{row['vs_float32_one_pass']:.2f}×")
        kept_ratio = "" if name in REFERENCES else f"{other['vs_float32_plain']:.2f}×"
        lines.append(f"| {name} | {row['ms']:.1f} | {ratios[0]} | {ratios[1]} | {other['ms']:.1f} | {kept_ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2**12 elements, 3 repetitions (smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size-log2", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--leaf-only", action="store_true", help=argparse.SUPPRESS)  # the child: JSON on stdout
    args = ap.parse_args(argv)
    n = 1 << (args.size_log2 or (12 if args.quick else 24))
    reps = args.reps or (3 if args.quick else 15)
    if args.leaf_only:
        print(json.dumps(measure(n, reps)))
        return None
    args.out = results_folder(args.out, args.quick, "quantized-step")
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                command="python -m benchmarks.quantized_step " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=machine(), load_start=load(), n=n, reps=reps,
                versions=f"jax {jax.__version__}, optax {optax.__version__}"
                         f" (one-pass kernel {'built' if kernels.available() else 'unavailable'})")
    meta["train"] = measure_train(n, 4 * reps + 1)  # shares are differences: more turns
    meta["many"] = MANY_LEAVES if not args.quick else (4, 4096)  # (a quantized leaf: ≥ 4096 elements)
    meta["many_leaves"] = measure_train(meta["many"][1], 4 * reps + 1, meta["many"][0])
    result = measure(n, reps)
    meta["keeping_freed"] = measure_keeping_freed(n, reps)
    meta["load_end"] = load()
    text = render(result, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantized_step.md").write_text(text)
    (args.out / "quantized_step.json").write_text(json.dumps({"meta": meta, "results": result}, indent=1))
    print(text)
    return result, args.out


if __name__ == "__main__":
    main()
