"""The plain path: ``tx.update`` then ``optax.apply_updates`` in one donated ``jax.jit``, adaptx against optax.

This is the step every flax / equinox / TrainState user runs; it never reaches
adaptx's one-pass kernel (``update_and_apply``), so it shows what the core
itself costs. Adam, RMSProp and Adagrad are compared in one process, with
hyperparameters matched so both libraries do the same arithmetic:

- adaptx ``adam(1e-3)`` / optax ``adam(1e-3)``;
- adaptx ``rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=True)`` / optax ``rmsprop(1e-3, decay=0.9, eps=1e-8)``;
- adaptx ``adagrad(1e-3, 0.1, 1e-7, eps_in_sqrt=True)`` / optax ``adagrad(1e-3)`` (optax's defaults).

A third column, ``optax.inject_hyperparams(<same optimizer>)(<same arguments>)``,
is the fair peer: like adaptx it keeps hyperparameters in the state.

Measured, in this order:

1. jaxpr equations per leaf of the jitted step on a 300-leaf tree of small
   mixed shapes (nested ``jit`` calls counted by their bodies): the work handed
   to XLA, which drives trace and compile time;
2. trace, lower and compile seconds at 300 and 1000 leaves: the median over
   fresh builds (a new ``jax.jit`` after ``jax.clear_caches()``), contenders
   taking turns so load from other processes lands on all of them;
3. ms per step on one float32 leaf of 2**24 elements, donated, the median over
   many steps after a warm-up, contenders taking turns;
4. how many times the step recompiles after ``adaptx.set_hyperparams(state,
   learning_rate=...)`` (inject_hyperparams: ``state.hyperparams[...] = ...``,
   optax's documented idiom), read from the jitted function's cache size;
5. ``len(str(tx.init({'w': jnp.zeros(3)})))``: what a user sees printing the state.

Only ratios within one run mean anything on a shared machine. Usage:
``python -m benchmarks.plain_path [--write] [--quick] [--before JSON]`` (6–8
minutes on two busy cores, most of it compiling 1000 leaves); ``--write``
records ``plain_path.md`` and ``plain_path.json`` here, ``--quick`` (a smoke
test, half a minute) never writes committed files. ``--before
benchmarks/plain_path_before.json`` puts a before → after table of the ratios
at the top; ``--render JSON`` re-renders a recorded run instead of measuring.
"""
import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import adaptx
from benchmarks.run import load, machine
from benchmarks.timing import interleaved, median_ms, results_folder

OPTIMIZERS = ("adam", "rmsprop", "adagrad")
CONTENDERS = ("adaptx", "optax", "inject")
LR = 1e-3
SHAPES = [(8, 8), (64,), (4, 16), (2, 4, 8), (128,), (16, 3)]  # small leaves: per-leaf costs dominate

# (adaptx optimizer, optax optimizer's factory, its keyword arguments): the same arithmetic on both sides
SPECS = {
    "adam": (lambda: adaptx.adam(LR), optax.adam, dict(learning_rate=LR)),
    "rmsprop": (lambda: adaptx.rmsprop(LR, 0.9, 1e-8, eps_in_sqrt=True), optax.rmsprop,
                dict(learning_rate=LR, decay=0.9, eps=1e-8)),
    "adagrad": (lambda: adaptx.adagrad(LR, 0.1, 1e-7, eps_in_sqrt=True), optax.adagrad, dict(learning_rate=LR)),
}


def make_tx(opt, who):
    build_adaptx, factory, kwargs = SPECS[opt]
    if who == "adaptx":
        return build_adaptx()
    return factory(**kwargs) if who == "optax" else optax.inject_hyperparams(factory)(**kwargs)


def plain_step(tx):
    """The user's step, jitted with params and state donated."""
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def small_tree(leaves):
    params = {f"p{i:04d}": jnp.full(SHAPES[i % len(SHAPES)], 0.5, jnp.float32) for i in range(leaves)}
    return params, jax.tree.map(lambda p: p * 0.01, params)


def count_eqns(jaxpr):
    """Equations of ``jaxpr``, a nested call (jit, custom_jvp, ...) counted as the equations of its body."""
    total = 0
    for eqn in jaxpr.eqns:
        values = [x for v in eqn.params.values() for x in (v if isinstance(v, (tuple, list)) else [v])]
        subs = [getattr(v, "jaxpr", v) for v in values if hasattr(getattr(v, "jaxpr", v), "eqns")]
        total += sum(count_eqns(s) for s in subs) if subs else 1
    return total


def eqns_per_leaf(opt, who, leaves):
    tx = make_tx(opt, who)
    params, grads = small_tree(leaves)
    traced = plain_step(tx).trace(params, tx.init(params), grads)
    return count_eqns(traced.jaxpr.jaxpr) / leaves


def build_times(opt, leaves, repeats):
    """{contender: {trace_s, lower_s, compile_s, total_s}}, medians over ``repeats`` fresh builds."""
    params, grads = small_tree(leaves)
    runs = {who: [] for who in CONTENDERS}
    for _ in range(repeats):
        for who in CONTENDERS:
            jax.clear_caches()
            tx = make_tx(opt, who)
            state = tx.init(params)
            jitted = plain_step(tx)
            t0 = time.perf_counter()
            traced = jitted.trace(params, state, grads)
            t1 = time.perf_counter()
            lowered = traced.lower()
            t2 = time.perf_counter()
            lowered.compile()
            t3 = time.perf_counter()
            runs[who].append(dict(trace_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2, total_s=t3 - t0))
    return {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for who, rs in runs.items()}


def step_ms(opt, n, reps):
    """{contender: median ms per donated step} on one float32 leaf of ``n`` elements, taking turns."""
    key = jax.random.PRNGKey(0)
    x = {"w": jax.random.normal(key, (n,), jnp.float32)}
    grads = {"w": jax.random.normal(jax.random.fold_in(key, 1), (n,), jnp.float32)}
    runs = {}
    for who in CONTENDERS:
        tx = make_tx(opt, who)
        jitted, params = plain_step(tx), jax.tree.map(jnp.copy, x)
        carry = [params, tx.init(params)]

        def run(jitted=jitted, carry=carry):
            carry[0], carry[1] = jitted(carry[0], carry[1], grads)
            jax.block_until_ready(carry)

        runs[who] = run
    times = interleaved(runs, reps)  # compiles and warms up each run first
    out = {who: median_ms(ts) for who, ts in times.items()}
    # the spread of adaptx/optax within a round, both steps timed back to back: the noise on the ratio
    q = statistics.quantiles([a / o for a, o in zip(times["adaptx"], times["optax"])], n=4) if reps > 1 else [None] * 3
    return {**out, "ratio_q1": q[0], "ratio_q3": q[2]}


def recompiles(opt, who, values=(3e-4, 1e-4, 2e-3)):
    """Compilations of the step beyond the first while the learning rate is changed between steps."""
    tx = make_tx(opt, who)
    params, grads = small_tree(3)
    state = tx.init(params)
    jitted = plain_step(tx)
    params, state = jitted(params, state, grads)
    first = jitted._cache_size()
    for lr in values:
        if who == "adaptx":
            state = adaptx.set_hyperparams(state, learning_rate=lr)
            assert abs(float(adaptx.hyperparams(state)["learning_rate"]) / lr - 1) < 1e-6  # it took effect
        else:
            state.hyperparams["learning_rate"] = lr
        params, state = jitted(params, state, grads)
    jax.block_until_ready(params)
    return jitted._cache_size() - first


def print_length(opt, who):
    return len(str(make_tx(opt, who).init({"w": jnp.zeros(3)})))


def measure(eqn_leaves=300, build_leaves=(300, 1000), repeats=3, n=1 << 24, step_reps=41, log=print):
    start, log = time.perf_counter(), (lambda log: lambda msg: log(f"[{time.perf_counter() - start:5.0f} s] {msg}"))(log)
    res = dict(eqn_leaves=eqn_leaves, build_leaves=list(build_leaves), repeats=repeats, n=n, step_reps=step_reps,
               eqns={}, build={}, step={}, recompiles={}, print_len={})
    for opt in OPTIMIZERS:
        res["eqns"][opt] = {who: eqns_per_leaf(opt, who, eqn_leaves) for who in CONTENDERS}
        res["recompiles"][opt] = {who: recompiles(opt, who) for who in ("adaptx", "inject")}
        res["print_len"][opt] = {who: print_length(opt, who) for who in CONTENDERS}
        log(f"{opt}: eqns/leaf {res['eqns'][opt]}, recompiles {res['recompiles'][opt]}")
    for leaves in build_leaves:
        for opt in OPTIMIZERS:
            res["build"].setdefault(str(leaves), {})[opt] = build_times(opt, leaves, repeats)
            log(f"{opt} {leaves} leaves: " + ", ".join(
                f"{w} {t['total_s']:.2f}s" for w, t in res["build"][str(leaves)][opt].items()))
    for opt in OPTIMIZERS:
        res["step"][opt] = step_ms(opt, n, step_reps)
        log(f"{opt} step ms: {res['step'][opt]}")
    return res


def targets(res):
    """[(target, adaptx, peer, ratio, limit)] every target with its figures; met when ratio ≤ limit."""
    rows = []
    for opt in OPTIMIZERS:
        e = res["eqns"][opt]
        rows.append((f"{opt}: eqns/leaf ≤ optax", e["adaptx"], e["optax"], e["adaptx"] / e["optax"], 1.0))
    for leaves, per_opt in res["build"].items():
        for opt in OPTIMIZERS:
            a, o = per_opt[opt]["adaptx"]["total_s"], per_opt[opt]["optax"]["total_s"]
            rows.append((f"{opt}: trace+compile at {leaves} leaves ≤ optax", a, o, a / o, 1.0))
    for opt in OPTIMIZERS:
        s = res["step"][opt]
        rows.append((f"{opt}: step on {res['n']:,} params ≤ optax", s["adaptx"], s["optax"], s["adaptx"] / s["optax"], 1.0))
    for opt in OPTIMIZERS:
        r = res["recompiles"][opt]
        rows.append((f"{opt}: recompiles after set_hyperparams = 0", r["adaptx"], r["inject"], None, 0))
    p = res["print_len"]["adam"]
    rows.append(("adam: print length ≤ inject_hyperparams'", p["adaptx"], p["inject"], p["adaptx"] / p["inject"], 1.0))
    return rows


def met(row):
    _, adaptx_value, _, ratio, limit = row
    return adaptx_value == 0 if ratio is None else ratio <= limit


def before_after(before, after, before_meta):
    """Markdown rows comparing two runs figure by figure: adaptx's value and its ratio to the peer in each run."""
    f = lambda v, d=2: "–" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}f}")
    pair = lambda a, p, d=2: (f"{f(a, d)} ({f(p, d)})", f(a / p, 3))
    rows = []
    for opt in OPTIMIZERS:
        rows.append((f"eqns/leaf ({after['eqn_leaves']} leaves)", opt, "optax",
                     *(pair(r["eqns"][opt]["adaptx"], r["eqns"][opt]["optax"]) for r in (before, after))))
    for leaves in after["build"]:
        for opt in OPTIMIZERS:
            cells = [pair(r["build"][leaves][opt]["adaptx"]["total_s"], r["build"][leaves][opt]["optax"]["total_s"])
                     if leaves in r["build"] else ("–", "–") for r in (before, after)]
            rows.append((f"trace+compile s, {leaves} leaves", opt, "optax", *cells))
    for opt in OPTIMIZERS:
        rows.append((f"step ms, {after['n']:,} params", opt, "optax",
                     *(pair(r["step"][opt]["adaptx"], r["step"][opt]["optax"]) for r in (before, after))))
    for opt in OPTIMIZERS:
        rows.append(("print length", opt, "inject", *(
            pair(r["print_len"][opt]["adaptx"], r["print_len"][opt]["inject"], 0) for r in (before, after))))
    out = ["## Before → after", "",
           f"Before: the run of {before_meta['date']} (`benchmarks/plain_path_before.md`, `.json`); after: this run"
           " (table from `--before benchmarks/plain_path_before.json`; `--render benchmarks/plain_path.json` redraws it"
           " without measuring). Each cell is"
           " adaptx's figure (the peer's in brackets, same run) and adaptx/peer; seconds and milliseconds from two runs"
           " on a shared machine do not compare, the ratios do.", "",
           "| figure | optimizer | peer | before: adaptx (peer) | before: adaptx/peer | after: adaptx (peer) |"
           " after: adaptx/peer | adaptx/peer ≤ 1, before → after |", "|---|---|---|---|---|---|---|---|"]
    ok = lambda ratio: "–" if ratio == "–" else ("yes" if float(ratio) <= 1.0 else "no")
    out += [f"| {name} | {opt} | {peer} | {b[0]} | {b[1]} | {a[0]} | {a[1]} | {ok(b[1])} → {ok(a[1])} |"
            for name, opt, peer, b, a in rows]
    return out + [""]


def markdown(res, meta, before=None):
    f = lambda v, d=2: "–" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}f}")
    out = ["# Plain path: `tx.update` + `optax.apply_updates`, donated, adaptx vs optax", "",
           f"Recorded {meta['date']} with `{meta['command']}` on {meta['machine']}.",
           f"{meta['versions']}. Load average at start / end: {meta['load_start']} / {meta['load_end']}.", ""]
    if before is not None:
        out += before_after(before["results"], res, before["meta"])
    out += [
           "Method and hyperparameters: see the docstring of `benchmarks/plain_path.py`. "
           "**inject** is `optax.inject_hyperparams(<optimizer>)(<same arguments>)`.", "",
           "## Targets", "", "| target | adaptx | peer | adaptx/peer | met |", "|---|---|---|---|---|"]
    for row in targets(res):
        peer = "inject" if "recompiles" in row[0] or "print" in row[0] else "optax"
        out.append(f"| {row[0]} | {f(row[1])} | {f(row[2])} ({peer}) | {f(row[3], 3)} | {'yes' if met(row) else '**no**'} |")
    side_by_side = lambda title, table, d: ["", title, "", "| optimizer | adaptx | optax | inject | adaptx/optax |"
                                            " adaptx/inject |", "|---|---|---|---|---|---|"] + [
        f"| {opt} | {f(v['adaptx'], d)} | {f(v['optax'], d)} | {f(v['inject'], d)} | {f(v['adaptx'] / v['optax'])} | "
        f"{f(v['adaptx'] / v['inject'])} |" for opt, v in table.items()]
    out += side_by_side(f"## Jaxpr equations per leaf ({res['eqn_leaves']} leaves)", res["eqns"], 1)
    out += ["", f"## Trace, lower and compile seconds (median of {res['repeats']} fresh builds)", "",
            "| optimizer | leaves | contender | trace s | lower s | compile s | total s | total / optax |",
            "|---|---|---|---|---|---|---|---|"]
    for leaves, per_opt in res["build"].items():
        for opt, per_who in per_opt.items():
            for who, t in per_who.items():
                out.append(f"| {opt} | {leaves} | {who} | {f(t['trace_s'])} | {f(t['lower_s'])} | {f(t['compile_s'])} | "
                           f"{f(t['total_s'])} | {f(t['total_s'] / per_who['optax']['total_s'])} |")
    out += side_by_side(f"## Step on one float32 leaf of {res['n']:,} elements (ms, median of {res['step_reps']})",
                        res["step"], 2)
    out += ["", "Quartiles of adaptx/optax over the rounds (each round times both back to back): " + ", ".join(
        f"{opt} {f(s['ratio_q1'])}–{f(s['ratio_q3'])}" for opt, s in res["step"].items()) + "."]
    out += ["", "## Recompiles while the learning rate changes, and `len(str(tx.init({'w': jnp.zeros(3)})))`", "",
            "| optimizer | recompiles adaptx | recompiles inject | print adaptx | print optax | print inject |",
            "|---|---|---|---|---|---|"]
    for opt in OPTIMIZERS:
        r, p = res["recompiles"][opt], res["print_len"][opt]
        out.append(f"| {opt} | {r['adaptx']} | {r['inject']} | {p['adaptx']} | {p['optax']} | {p['inject']} |")
    out += ["", "The learning rate is set three times between steps. inject's one recompile is optax's idiom"
            " `state.hyperparams['learning_rate'] = 3e-4`: a Python float is weakly typed, unlike the float32"
            " array the step returned, so the first assignment changes the step's input types; later ones hit the cache."]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record plain_path.md and plain_path.json in benchmarks/")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, few repeats; never writes here")
    ap.add_argument("--out", type=Path, default=None, help="folder for --write (default benchmarks/; --quick: a temp dir)")
    ap.add_argument("--before", type=Path, default=None,
                    help="plain_path.json of an earlier run: a before → after table at the top")
    ap.add_argument("--render", type=Path, default=None,
                    help="re-render this recorded plain_path.json instead of measuring (with --write: rewrite it)")
    args = ap.parse_args(argv)
    before = json.loads(args.before.read_text()) if args.before else None
    if args.render:
        recorded = json.loads(args.render.read_text())
        res, meta = recorded["results"], recorded["meta"]
    else:
        sizes = dict(eqn_leaves=12, build_leaves=(6, 12), repeats=1, n=1 << 12, step_reps=3) if args.quick else {}
        meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    command="python -m benchmarks.plain_path " + " ".join(argv if argv is not None else sys.argv[1:]),
                    machine=machine(), load_start=load(),
                    versions=f"jax {jax.__version__}, optax {optax.__version__}, adaptx {adaptx.__version__}")
        res = measure(**sizes)
        meta["load_end"] = load()
    text = markdown(res, meta, before)
    print(text)
    if args.write:
        out = results_folder(args.out, args.quick, "plain-path")
        (out / "plain_path.md").write_text(text)
        rows = [dict(target=r[0], adaptx=r[1], peer=r[2], ratio=r[3], met=met(r)) for r in targets(res)]
        (out / "plain_path.json").write_text(json.dumps(dict(meta=meta, results=res, targets=rows), indent=1) + "\n")
        print(f"wrote {out / 'plain_path.md'} and {out / 'plain_path.json'}")
    return res, text


if __name__ == "__main__":
    main()
