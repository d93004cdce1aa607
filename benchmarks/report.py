"""RESULTS.md and results.json from the records of a run, with every target and whether it was met."""
import json
from pathlib import Path

NOTES = Path(__file__).with_name("notes.md")
# Written by benchmarks/sweep_bench.py (issue 5): sweeps and monitor overhead.
SWEEPS = Path(__file__).with_name("RESULTS_sweeps.md")
# Written by benchmarks/train_step_share.py --write: the training-step share and the plain path's before → after.
TRAIN_STEP = Path(__file__).with_name("RESULTS_train_step.md")


def _find(records, suite, run):
    return next((r for r in records if r["suite"] == suite and r["run"] == run), None)


def _ratio(records, suite, a, b):
    ra, rb = _find(records, suite, a), _find(records, suite, b)
    return None if ra is None or rb is None else ra["median_ms"] / rb["median_ms"]


def bandwidth_fraction(records, run):
    """Achieved bytes/s of ``run`` over the donated copy's bytes/s, both from the single-leaf suite."""
    rec, copy = _find(records, "single_leaf", run), _find(records, "single_leaf", "donated copy")
    if rec is None or copy is None:
        return None
    return (rec["bytes"] / rec["median_ms"]) / (copy["bytes"] / copy["median_ms"])


def targets(records):
    """[(target, measured, limit, lower_is_better)] for every target of issue 4 the run measured."""
    rows = []
    add = lambda name, value, limit, lower=True: value is not None and rows.append((name, value, limit, lower))
    add("Adam 1 leaf: adaptx / torch fused", _ratio(records, "single_leaf", "adaptx adam", "torch adam"), 1.0)
    add("Adam 1 leaf: adaptx / optax", _ratio(records, "single_leaf", "adaptx adam", "optax adam"), 0.6)
    for name in ("adagrad", "rmsprop"):
        add(f"{name} 1 leaf: adaptx / optax", _ratio(records, "single_leaf", f"adaptx {name}", f"optax {name}"), 0.7)
    for name in ("adam", "adagrad", "rmsprop"):
        add(f"{name} 1 leaf: bandwidth / donated copy", bandwidth_fraction(records, f"adaptx {name}"), 0.9, False)
    # the many-leaf targets are read off the fastest adaptx path the run measured
    a = _find(records, "many_leaves", "adaptx flat_state") or _find(records, "many_leaves", "adaptx")
    o = _find(records, "many_leaves", "optax")
    if a and o:
        setup = lambda r: r["trace_s"] + r["lower_s"] + r["compile_s"]
        add(f"many leaves: trace+compile {a['impl']} / optax", setup(a) / setup(o), 0.2)
        add(f"many leaves: step {a['impl']} / optax", a["median_ms"] / o["median_ms"], 0.5)
    add("bf16 params / f32 params (adaptx adam)", _ratio(records, "bf16", "adaptx adam bfloat16", "adaptx adam float32"), 1.0)
    return rows


def why_not(target, records) -> str:
    """Why a target was missed, from the figures of the same run."""
    setup = lambda r: r["trace_s"] + r["lower_s"] + r["compile_s"]
    flat = "flat_state" in target
    floor = _find(records, "many_leaves", "floor: donated identity" + (", flat state" if flat else ""))
    optax_many = _find(records, "many_leaves", "optax")
    mine = _find(records, "many_leaves", "adaptx flat_state" if flat else "adaptx")
    if target.endswith("1 leaf: adaptx / optax"):
        name = target.split()[0].lower()
        a, o = bandwidth_fraction(records, f"adaptx {name}"), bandwidth_fraction(records, f"optax {name}")
        if a is not None and o is not None and a >= 0.9:
            return (f"adaptx runs at {a:.2f} of the copy's bandwidth and optax at {o:.2f}: at full copy"
                    f" bandwidth the ratio would still be {o:.2f}")
        return f"adaptx reached only {a:.2f} of the copy's bandwidth in this run"
    if target.endswith("bandwidth / donated copy"):
        return ("a division and a square root per 20 B of traffic (Adam: per 28 B) on two cores shared with"
                " other jobs; within the spread between runs")
    if target.startswith("many leaves: trace") and floor and optax_many:
        return (f"passing the same arrays through a donated identity ({floor['run']}) already costs"
                f" {setup(floor) / setup(optax_many):.2f} of optax's; adaptx costs {setup(mine) / setup(floor):.1f}x that")
    if target.startswith("many leaves: step") and floor and optax_many:
        return (f"passing the same arrays through a donated identity ({floor['run']}) takes"
                f" {floor['median_ms'] / optax_many['median_ms']:.2f} of optax's step; the kernel adds"
                f" {mine['median_ms'] - floor['median_ms']:.0f} ms for {mine['bytes'] / 1e6:.0f} MB")
    if target.startswith("bf16"):
        two = _ratio(records, "bf16", "adaptx two-step adam bfloat16", "adaptx two-step adam float32")
        return ("the kernel rounds to bfloat16 after every op, as jnp does, to give the same numbers, which"
                f" makes the bf16 loop compute-bound (two-step path, same run: {two:.2f})")
    return ""


def _single_leaf_table(records):
    lines = ["| optimizer | adaptx ms | adaptx two-step ms | optax ms | torch ms | adaptx/optax | adaptx/torch |"
             " bandwidth / copy: adaptx, two-step, optax, torch |", "|---|---|---|---|---|---|---|---|"]
    for name in ("adam", "adagrad", "rmsprop"):
        cells = [_find(records, "single_leaf", f"{impl} {name}") for impl in ("adaptx", "adaptx two-step", "optax", "torch")]
        if cells[0] is None:
            continue
        ms = [f"{c['median_ms']:.1f}" if c else "–" for c in cells]
        bw = [bandwidth_fraction(records, c["run"]) if c else None for c in cells]
        ratio = lambda other: f"{cells[0]['median_ms'] / other['median_ms']:.2f}" if other else "–"
        lines.append(f"| {name} | {' | '.join(ms)} | {ratio(cells[2])} | {ratio(cells[3])} | "
                     + ", ".join(f"{b:.2f}" if b is not None else "–" for b in bw) + " |")
    copy = _find(records, "single_leaf", "donated copy")
    if copy:
        lines.append(f"\nDonated copy: {copy['median_ms']:.2f} ms = {copy['bytes'] / copy['median_ms'] / 1e6:.1f} GB/s."
                     " Bandwidth counts 28 B/param for Adam and 20 B for Adagrad and RMSProp, the single-pass"
                     " minimum, whatever the implementation really moves.")
    torch_impls = sorted({r["impl"] for r in records if r["suite"] == "single_leaf" and r["run"].startswith("torch")})
    if torch_impls:
        lines.append("torch implementations: " + "; ".join(torch_impls) + ".")
    return lines


def _many_leaves_table(records):
    rows = [r for r in records if r["suite"] == "many_leaves"]
    if not rows:
        return []
    optax_rec = _find(records, "many_leaves", "optax")
    lines = [f"{rows[0]['leaves']} leaves, {rows[0]['params']:,} float32 params, Adam.\n",
             "| contender | trace s | lower s | compile s | step ms | step / optax | fusions | custom calls |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = lambda k: f"{r[k]:.2f}" if k in r else "–"
        ratio = f"{r['median_ms'] / optax_rec['median_ms']:.2f}" if optax_rec else "–"
        lines.append(f"| {r['impl']} | {t('trace_s')} | {t('lower_s')} | {t('compile_s')} | {r['median_ms']:.1f} | "
                     f"{ratio} | {r.get('fusions', '–')} | {r.get('custom_calls', '–')} |")
    floor = _find(records, "many_leaves", "floor: donated identity")
    if floor:
        lines.append("\nThe floor rows jit `lambda params, state, grads: (params, state)` with the same arrays and"
                     " donation (the state of `adam` or of `flat_state(adam)`): the cost of passing this many arrays"
                     " through JAX and XLA, whatever the step computes. **adaptx flat_state** is"
                     " `adaptx.flat_state(adaptx.adam(1e-3))` stepped by `update_and_apply`; the many-leaf targets"
                     " are read off it.")
    return lines


def _bf16_table(records):
    rows = [r for r in records if r["suite"] == "bf16"]
    lines = ["| run | step ms | bytes/param |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['median_ms']:.1f} | {r['bytes'] // (r['bytes'] // (28 if r['dtype'] == 'float32' else 22))} |"
              for r in rows]
    return lines if rows else []


def write(records, meta, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = targets(records)
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "records": records,
         "targets": [dict(target=t, measured=v, limit=lim, met=(v <= lim if lower else v >= lim)) for t, v, lim, lower in rows]},
        indent=1))
    md = [
        "# adaptx benchmark results", "",
        f"Recorded {meta['date']} with `{meta['command']}` on {meta['machine']}.",
        f"{meta['versions']}. Load average at start / end: {meta['load_start']} / {meta['load_end']}.", "",
        "Each table's runs were timed in one process, taking turns, and the figures are medians; ratios are"
        " taken between runs of the same table. **adaptx** is the default path, `adaptx.update_and_apply`"
        " (what `adaptx.make_train_step` runs): the one-pass CPU kernel where it applies. **adaptx two-step**"
        " is `tx.update` then `adaptx.apply_updates` on the same optimizer, which XLA compiles itself."
        " Everything is jitted with donated params and state.", "",
        "## Targets (issue 4)", "", "| target | measured | limit | met | why not |", "|---|---|---|---|---|",
        *[f"| {t} | {v:.2f} | {'≤' if lower else '≥'} {lim} | "
          + ("yes | |" if (v <= lim if lower else v >= lim) else f"**no** | {why_not(t, records)} |")
          for t, v, lim, lower in rows], "",
        "## (a, d) One leaf of float32 params", "", *_single_leaf_table(records), "",
        "## (b) Many leaves", "", *_many_leaves_table(records), "",
        "## (c) bfloat16 params, float32 moments", "", *_bf16_table(records), "",
    ]
    md += [part.read_text() for part in (NOTES, SWEEPS, TRAIN_STEP) if part.exists()]
    (out_dir / "RESULTS.md").write_text("\n".join(md) + "\n")
