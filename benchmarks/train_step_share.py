"""The optimizer's share of a donated training step: (step − loss-and-grad), adaptx against optax and torch.

A user runs the optimizer inside a training step, after the gradient, so this
times the whole step and, in the same process, taking turns, the
loss-and-gradient alone; the difference is what the optimizer costs there:

- **adaptx**: ``adaptx.make_train_step(loss, tx)`` (donated, jitted; the one-pass
  kernel where ``adaptx.kernels.explain`` says it runs, which is recorded);
- **optax**: the standard step, ``loss, grads = jax.value_and_grad(loss)(params,
  batch); updates, state = tx.update(grads, state, params); params =
  optax.apply_updates(params, updates)``, jitted with ``donate_argnums=(0, 1)``;
- **adaptx two-step**: the same standard step with the adaptx optimizer
  (``tx.update`` + ``adaptx.apply_updates``): adaptx without the kernel;
- **loss-and-grad**: ``jax.jit(jax.value_and_grad(loss), donate_argnums=0)``,
  its gradient fed back as the next call's params (same shape and dtype, so
  the donated buffer is reused and the values stay put at batch = 1);
- **torch**: ``torch.optim.<Optimizer>(fused=True)`` (``foreach=True`` where fused
  fails on CPU) timed on ``optimizer.step()`` alone, the gradient already in
  ``.grad``: torch's share directly, no backward pass.

The loss is ``0.5 · batch · Σ p²`` summed in float32 over every leaf (``batch``
a float32 scalar passed at run time, so nothing is constant-folded): its
gradient is ``batch · p``, one elementwise pass, and the loss a reduction.

Hyperparameters: Adam ``adam(1e-3)`` both sides; RMSProp ``adaptx.rmsprop(1e-3,
0.9, 1e-8)`` against ``optax.rmsprop(1e-3)`` (decay 0.9, eps 1e-8): the kernel
takes ε outside the root, ``g / (√v + ε)``, optax puts it inside, ``g / √(v + ε)``
(one add either way; adaptx's ``eps_in_sqrt=True`` has no kernel); Adagrad
``adaptx.adagrad(1e-2, 0.1, 1e-7)`` against ``optax.adagrad(1e-2)`` (G₀ = 0.1,
ε = 1e-7), ε outside the root against optax's ``rsqrt(G + ε)`` inside.

Cases: one float32 leaf of 2**24 elements (Adam, Adagrad, RMSProp, and
``chain(clip_by_global_norm(1.0), adam)``); 1000 leaves of mixed small shapes
(8.7 M elements; ``adam`` and ``flat_state(adam)``, with trace + lower +
compile seconds over fresh builds); bfloat16 against float32 params
(Adam, 2**24); and 8 simulated devices (``benchmarks/train_step_share_sharded.py``
in a subprocess: a (2048, 2048) float32 leaf sharded ``P("data", "model")`` over
a 2×4 mesh, against the plain path ``tx.update`` + ``apply_updates``).

Every compiled step's HLO is read for the copies XLA inserts in the entry
computation (bytes copied over bytes of params), its fusions and custom calls.

Only ratios within one run mean anything on a shared machine. Usage:
``python -m benchmarks.train_step_share [--write] [--quick] [--out DIR]``;
``--write`` records ``train_step_share.md`` and ``train_step_share.json`` here,
``--quick`` (a smoke test, under a minute) never writes committed files, ``--render
benchmarks/train_step_share.json`` redraws a recorded run without measuring.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import adaptx
from benchmarks.run import load, machine
from benchmarks import steppers
from benchmarks.timing import compile_phases, interleaved, median_ms, results_folder

HERE = Path(__file__).parent
ROOT = HERE.parent
LR = {"adam": 1e-3, "adagrad": 1e-2, "rmsprop": 1e-3}
LAG = "loss-and-grad"
LOSS_FIRST = "adaptx, loss first (experiment)"

# name: (adaptx optimizer, optax optimizer, torch class or None); the same arithmetic but for ε's place (docstring)
SINGLE = {
    "adam": (lambda: adaptx.adam(LR["adam"]), lambda: optax.adam(LR["adam"]), "adam"),
    "adagrad": (lambda: adaptx.adagrad(LR["adagrad"], 0.1, 1e-7), lambda: optax.adagrad(LR["adagrad"]), "adagrad"),
    "rmsprop": (lambda: adaptx.rmsprop(LR["rmsprop"], 0.9, 1e-8), lambda: optax.rmsprop(LR["rmsprop"]), "rmsprop"),
    "clip+adam": (lambda: adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(LR["adam"])),
                  lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR["adam"])), None),
}


def loss_fn(params, batch):
    """0.5 · batch · Σ p², in float32 whatever the params' dtype."""
    return 0.5 * batch * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params))


def standard_step(tx, apply_updates=optax.apply_updates):
    """The step written the standard way, donated: value_and_grad, ``tx.update``, ``apply_updates``."""
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def loss_first_step(tx):
    """An experiment, not adaptx's API: make_train_step's step with the loss ordered before the kernel.

    ``grads + 0·loss`` (fused into the gradient's loop, no extra pass) makes the
    loss's reduction, which reads the params, an input of the kernel that
    overwrites them; XLA then needs no copy of the params to keep that read
    valid. (It differs from make_train_step only for a non-finite loss.)
    """
    grad_fn = jax.value_and_grad(loss_fn)

    def step(params, state, batch):
        loss, grads = grad_fn(params, batch)
        grads = jax.tree.map(lambda g: g + (0.0 * loss).astype(g.dtype), grads)
        return (*adaptx.update_and_apply(tx, grads, state, params), loss)

    return jax.jit(step, donate_argnums=(0, 1))


def loss_and_grad():
    return jax.jit(jax.value_and_grad(loss_fn), donate_argnums=0)


def copy_params(params):
    return jax.tree.map(jnp.copy, params)


def train_stepper(compiled, tx, params, batch):
    """Runs ``compiled(params, state, batch)`` on held, donated buffers."""
    carry = [copy_params(params), None]
    carry[1] = tx.init(carry[0])

    def run():
        carry[0], carry[1], loss = compiled(carry[0], carry[1], batch)
        jax.block_until_ready((carry, loss))

    return run


def lag_stepper(compiled, params, batch):
    """Runs the loss-and-grad, its gradient (``batch · p``, donated into p's buffer) the next params."""
    carry = [copy_params(params)]

    def run():
        loss, carry[0] = compiled(carry[0], batch)
        jax.block_until_ready((carry, loss))

    return run


_SHAPE = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")
_BYTES = {"pred": 1}


def _nbytes(dtype, dims):
    size = 1
    for d in filter(None, dims.split(",")):
        size *= int(d)
    width = _BYTES.get(dtype) or max(1, int(re.sub(r"\D", "", dtype) or 8) // 8)
    return size * width


def hlo_summary(hlo: str, params) -> dict:
    """Param-sized copies XLA put in the entry computation (count, bytes over the params'), fusions, custom calls.

    A copy counts when it moves at least as many bytes as the smallest param
    leaf (per device: a sharded step's HLO holds one shard's shapes).
    """
    leaf_bytes = [_shard_bytes(p) for p in jax.tree.leaves(params)]
    entry = hlo[hlo.index("\nENTRY"):] if "\nENTRY" in hlo else hlo
    entry = entry[:entry.find("\n}") + 1] if "\n}" in entry else entry
    copies = [_nbytes(*m.groups()) for line in entry.splitlines() if " copy(" in line
              for m in [_SHAPE.search(line.split("=", 1)[1])] if m]
    big = [b for b in copies if b >= min(leaf_bytes)]
    return dict(copies=len(big), copy_bytes=sum(big), copies_over_params=sum(big) / sum(leaf_bytes),
                fusions=entry.count(" fusion("), custom_calls=entry.count(" custom-call("),
                kernel_calls=entry.count('custom_call_target="adaptx_fused_step"'))


def _shard_bytes(p):
    size = 1
    for d in p.sharding.shard_shape(p.shape):
        size *= d
    return size * p.dtype.itemsize


def contenders(tx, otx, params, batch, extra=()):
    """{name: (jitted, args, tx)} of the steps timed in one case; args are what it is compiled for."""
    out = {LAG: (loss_and_grad(), (params, batch), None),
           "adaptx": (adaptx.make_train_step(loss_fn, tx), (params, tx.init(params), batch), tx)}
    for name, t in extra:
        out[name] = (adaptx.make_train_step(loss_fn, t), (params, t.init(params), batch), t)
    out[LOSS_FIRST] = (loss_first_step(tx), (params, tx.init(params), batch), tx)
    out["adaptx two-step"] = (standard_step(tx, adaptx.apply_updates), (params, tx.init(params), batch), tx)
    if otx is not None:
        out["optax"] = (standard_step(otx), (params, otx.init(params), batch), otx)
    return out


def time_case(cands, params, batch, reps, torch_opt=None, torch_sizes=None):
    """Compile each contender, time them taking turns; {name: {median_ms, share_ms, hlo, build}} and per-round times."""
    runs, info = {}, {}
    for name, (jitted, args, tx) in cands.items():
        phases = compile_phases(jitted, *args)
        compiled = phases.pop("compiled")
        info[name] = dict(build=phases, hlo=hlo_summary(compiled.as_text(), params))
        runs[name] = lag_stepper(compiled, params, batch) if tx is None else train_stepper(compiled, tx, params, batch)
        del args
    if torch_opt is not None:
        run, how = steppers.torch_step(torch_opt, torch_sizes, LR[torch_opt])
        if run is not None:
            runs["torch"], info["torch"] = run, dict(impl=how)
        else:
            info["torch"] = dict(impl=how, missing=True)
    times = interleaved(runs, reps)
    # torch's optimizer.step() is its share already; the others' share is step − loss-and-grad, round by round
    shares = {name: ts if name == "torch" else [t - l for t, l in zip(ts, times[LAG])] for name, ts in times.items()}
    for name, ts in times.items():
        info[name]["median_ms"] = median_ms(ts)
        info[name]["share_ms"] = None if name == LAG else median_ms(shares[name])
    for peer in ("optax", "torch"):
        if peer in times and "adaptx" in times:
            info["adaptx"][f"share_quartiles_vs_{peer}"] = _quartiles(shares["adaptx"], shares[peer])
    return info


def _quartiles(a, b):
    """First and third quartiles of the per-round ratio a/b (both timed back to back in each round)."""
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    if len(ratios) < 2:
        return [None, None]
    q = statistics.quantiles(ratios, n=4)
    return [q[0], q[2]]


def single_leaf(n, reps, log):
    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (n,), jnp.float32)}
    batch = jnp.float32(1.0)
    out = {}
    for name, (make, make_optax, torch_opt) in SINGLE.items():
        tx = make()
        info = time_case(contenders(tx, make_optax(), params, batch), params, batch, reps, torch_opt, [n])
        out[name] = dict(explain=adaptx.kernels.explain(tx, params), runs=info)
        log(f"single leaf {name}: " + _brief(out[name]["runs"]))
    return out


def mixed_shapes(leaves):
    """1024·(1 + i mod 16) float32 elements per leaf (as benchmarks/suites.py), as (32, 32·(1 + i mod 16)) matrices."""
    return [(32, 32 * (1 + i % 16)) for i in range(leaves)]


def many_leaves(leaves, reps, build_repeats, log):
    params = {f"p{i:04d}": jnp.full(s, 0.5, jnp.float32) for i, s in enumerate(mixed_shapes(leaves))}
    batch = jnp.float32(1.0)
    tx, flat, otx = adaptx.adam(1e-3), adaptx.flat_state(adaptx.adam(1e-3)), optax.adam(1e-3)
    info = time_case(contenders(tx, otx, params, batch, extra=[("adaptx flat_state", flat)]), params, batch, reps)
    log(f"{leaves} leaves: " + _brief(info))
    # trace + lower + compile: the median over fresh builds (a new jit after clear_caches), contenders taking turns
    makers = {LAG: lambda: (loss_and_grad(), (params, batch)),
              "adaptx": lambda: (adaptx.make_train_step(loss_fn, tx), (params, tx.init(params), batch)),
              "adaptx flat_state": lambda: (adaptx.make_train_step(loss_fn, flat), (params, flat.init(params), batch)),
              "optax": lambda: (standard_step(otx), (params, otx.init(params), batch))}
    builds = {name: [] for name in makers}
    for _ in range(build_repeats):
        for name, make in makers.items():
            jax.clear_caches()
            jitted, args = make()
            phases = compile_phases(jitted, *args)
            phases.pop("compiled")
            builds[name].append(sum(phases.values()))
    for name, ts in builds.items():
        info[name]["build_s"] = statistics.median(ts)
        info[name]["build_share_s"] = None if name == LAG else statistics.median(
            [t - l for t, l in zip(ts, builds[LAG])])
    log(f"{leaves} leaves builds: " + ", ".join(f"{k} {v['build_s']:.2f}s" for k, v in info.items() if "build_s" in v))
    sizes = [a * b for a, b in mixed_shapes(leaves)]
    return dict(leaves=leaves, elements=sum(sizes), build_repeats=build_repeats,
                explain={"adaptx": adaptx.kernels.explain(tx, params),
                         "adaptx flat_state": adaptx.kernels.explain(flat, params)}, runs=info)


def bf16_vs_f32(n, reps, log):
    batch, out = jnp.float32(1.0), {}
    runs, info = {}, {}
    for dtype in (jnp.float32, jnp.bfloat16):
        label = jnp.dtype(dtype).name
        params = {"w": jax.random.normal(jax.random.PRNGKey(0), (n,), dtype)}
        tx = adaptx.adam(1e-3)
        out[label] = adaptx.kernels.explain(tx, params)
        for name, (jitted, args, t) in contenders(tx, None, params, batch).items():
            phases = compile_phases(jitted, *args)
            compiled = phases.pop("compiled")
            key = f"{name} {label}"
            info[key] = dict(hlo=hlo_summary(compiled.as_text(), params), dtype=label, impl=name)
            runs[key] = lag_stepper(compiled, params, batch) if t is None else train_stepper(compiled, t, params, batch)
    times = interleaved(runs, reps)
    for key, ts in times.items():
        lag = times[f"{LAG} {info[key]['dtype']}"]
        info[key]["median_ms"] = median_ms(ts)
        info[key]["share_ms"] = None if info[key]["impl"] == LAG else median_ms([t - l for t, l in zip(ts, lag)])
    log("bf16: " + ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in info.items()))
    return dict(explain=out, runs=info)


def sharded(side, reps, log, timeout=480):
    """The 8-device case in a subprocess (the device count is fixed when jax starts)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "benchmarks.train_step_share_sharded", "--side", str(side), "--reps", str(reps)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    res = json.loads(done.stdout.strip().splitlines()[-1])
    log("sharded: " + ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in res["runs"].items()))
    return res


def _brief(info):
    return ", ".join(f"{k} {v['median_ms']:.1f}" + (f" (share {v['share_ms']:.1f})" if v.get("share_ms") else "")
                     for k, v in info.items())


def measure(n=1 << 24, leaves=1000, reps=41, build_repeats=3, side=2048, log=print):
    start = time.perf_counter()
    log = (lambda log: lambda msg: log(f"[{time.perf_counter() - start:5.0f} s] {msg}"))(log)
    res = dict(n=n, reps=reps, side=side)
    res["single"] = single_leaf(n, reps, log)
    res["many"] = many_leaves(leaves, reps, build_repeats, log)
    res["bf16"] = bf16_vs_f32(n, reps, log)
    res["sharded"] = sharded(side, reps, log)
    return res


def targets(res):
    """[(target, adaptx value, peer value, ratio, limit)]; met when ratio ≤ limit (``equal``: ratio == 1)."""
    rows = []
    s = res["single"]
    share = lambda case, who: s[case]["runs"][who]["share_ms"]
    for case, limit in (("adam", 0.6), ("adagrad", 0.7), ("rmsprop", 0.7), ("clip+adam", 0.7)):
        a, o = share(case, "adaptx"), share(case, "optax")
        rows.append((f"{case} 1 leaf: optimizer share adaptx / optax", a, o, a / o, limit))
    if "torch" in s["adam"]["runs"] and "share_ms" in s["adam"]["runs"]["torch"]:
        a, t = share("adam", "adaptx"), share("adam", "torch")
        rows.append((f"adam 1 leaf: optimizer share adaptx / {s['adam']['runs']['torch']['impl']} step()", a, t, a / t, 1.0))
    m = res["many"]["runs"]
    for who in ("adaptx", "adaptx flat_state"):
        a, o = m[who]["share_ms"], m["optax"]["share_ms"]
        rows.append((f"{res['many']['leaves']} leaves: optimizer share of step, {who} / optax", a, o, a / o, 0.5))
    for who in ("adaptx", "adaptx flat_state"):
        a, o = m[who]["build_share_s"], m["optax"]["build_share_s"]
        rows.append((f"{res['many']['leaves']} leaves: optimizer share of trace+compile, {who} / optax", a, o, a / o, 0.2))
    b = res["bf16"]["runs"]
    a, f = b["adaptx bfloat16"]["share_ms"], b["adaptx float32"]["share_ms"]
    rows.append(("bf16 params: adaptx optimizer share, bfloat16 / float32", a, f, a / f, 1.0))
    a, f = b["adaptx bfloat16"]["median_ms"], b["adaptx float32"]["median_ms"]
    rows.append(("bf16 params: adaptx whole step, bfloat16 / float32", a, f, a / f, 1.0))
    sh = res["sharded"]
    a, p = sh["bytes_per_device"]["adaptx"], sh["bytes_per_device"]["plain"]
    rows.append(("8 devices: bytes per device of (params, state), adaptx / plain", max(a), max(p),
                 1.0 if a == p else max(a) / max(p), "equal"))
    a, p = sh["runs"]["adaptx"]["median_ms"], sh["runs"]["adaptx two-step"]["median_ms"]
    rows.append(("8 devices: step, make_train_step / plain path", a, p, a / p, 1.0))
    return rows


def met(row):
    *_, ratio, limit = row
    return ratio == 1.0 if limit == "equal" else ratio <= limit


def markdown(res, meta):
    f = lambda v, d=2: "–" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{d}f}")
    out = ["# The optimizer's share of a donated training step: adaptx vs optax and torch", "",
           f"Recorded {meta['date']} with `{meta['command']}` on {meta['machine']}.",
           f"{meta['versions']}. Load average at start / end: {meta['load_start']} / {meta['load_end']}.", "",
           "Method, losses and hyperparameters: see the docstring of `benchmarks/train_step_share.py`. "
           "**share** = step − loss-and-grad, each the median over rounds of the difference within a round "
           "(torch: `optimizer.step()` alone). Medians of "
           f"{res['reps']} rounds, contenders taking turns.", "",
           "## Targets", "", "| target | adaptx | peer | adaptx/peer | limit | met |", "|---|---|---|---|---|---|"]
    for row in targets(res):
        name, a, p, ratio, limit = row
        d = 0 if isinstance(a, int) else 2
        out.append(f"| {name} | {f(a, d)} | {f(p, d)} | {f(ratio, 3)} | {'= 1' if limit == 'equal' else f'≤ {limit}'}"
                   f" | {'yes' if met(row) else '**no**'} |")
    out += ["", "Figures in ms (step shares), s (trace+compile shares) or bytes (per device).", ""]
    out += ["## What the compiled steps show", ""] + findings(res, f)

    for case, c in res["single"].items():
        out += ["", f"## One float32 leaf of {res['n']:,} elements: {case}", "",
                f"`adaptx.kernels.explain`: {c['explain']}.", ""]
        out += _table(c["runs"], f)
        q = [(peer, c["runs"]["adaptx"].get(f"share_quartiles_vs_{peer}", [None])) for peer in ("optax", "torch")]
        if any(v[0] is not None for _, v in q):
            out += ["", "Quartiles of the per-round share ratio: " + ", ".join(
                f"adaptx/{peer} {f(v[0])}–{f(v[1])}" for peer, v in q if v[0] is not None) + "."]
    m = res["many"]
    out += ["", f"## {m['leaves']} leaves of mixed shapes, {m['elements']:,} float32 elements, Adam", "",
            "`adaptx.kernels.explain`: " + "; ".join(f"{k}: {v}" for k, v in m["explain"].items()) + ".",
            f"trace+compile: median of {m['build_repeats']} fresh builds (trace, lower, compile after"
            " `jax.clear_caches()`), contenders taking turns; share = step's − loss-and-grad's, per build round.", ""]
    out += _table(m["runs"], f, with_build=True)
    b = res["bf16"]
    out += ["", f"## bfloat16 against float32 params, {res['n']:,} elements, Adam (float32 moments)", "",
            "`adaptx.kernels.explain`: " + "; ".join(f"{k}: {v}" for k, v in b["explain"].items()) + ".", ""]
    out += _table(b["runs"], f, peer="adaptx float32")
    sh = res["sharded"]
    out += ["", f"## 8 simulated devices: one float32 ({sh['side']}, {sh['side']}) leaf, P(\"data\", \"model\") over a"
            " 2×4 mesh, Adam", "",
            f"Subprocess `python -m benchmarks.train_step_share_sharded` ({sh['devices']} CPU devices, {sh['axis_type']}"
            f" axes). `adaptx.kernels.explain`: {sh['explain']}. **adaptx two-step** is the plain path"
            " (`tx.update` + `adaptx.apply_updates` after the same loss-and-grad).",
            "Bytes per device of (params, state) after the steps: " + "; ".join(
                f"{k}: {', '.join(f'{v:,}' for v in sorted(set(vals)))}" for k, vals in sh["bytes_per_device"].items())
            + f". All-gathers in the compiled adaptx step: {sh['all_gathers']}.", ""]
    out += _table(sh["runs"], f, peer="adaptx two-step")
    out += ["", "**full-size copies**: `copy` instructions in the entry computation of the compiled step"
            " (`jax.jit(step).lower(...).compile().as_text()`) at least as large as the smallest param leaf (per"
            " device where sharded); **copied / params bytes**: their bytes over the params' (2.00 = two whole copies"
            " of the params per step); **kernel calls**: `adaptx_fused_step` custom calls."]
    return "\n".join(out) + "\n"


def findings(res, f):
    """Sentences read off this run's HLO summaries and shares: where the copies are, what ordering the loss removes."""
    lines = []
    for case, c in res["single"].items():
        r = c["runs"]
        a, x, o = r["adaptx"], r[LOSS_FIRST], r["optax"]
        lines.append(
            f"- {case}: make_train_step's compiled step copies {f(a['hlo']['copies_over_params'])}× the params' bytes"
            f" ({a['hlo']['copies']} param-sized copies; optax's step {o['hlo']['copies']}, the loss-and-grad"
            f" {r[LAG]['hlo']['copies']}). With the loss ordered before the kernel (experiment row):"
            f" {f(x['hlo']['copies_over_params'])}×, and a share of {f(x['share_ms'])} ms against make_train_step's"
            f" {f(a['share_ms'])} ms: {f(x['share_ms'] / o['share_ms'], 3)}× optax's share. Each copy cost about"
            f" {f((a['share_ms'] - x['share_ms']) / max(1, a['hlo']['copies'] - x['hlo']['copies']))} ms here"
            " (the shares' difference over the copies'), the kernel's whole share on the experiment row"
            f" {f(x['share_ms'])} ms.")
    lines += ["", "make_train_step's copies stand before the kernel: the loss's reduction reads the params but is no"
              " input of the custom call that overwrites them in place, so XLA's copy insertion (which orders"
              " operations by data dependence only) copies the params to keep that read valid: one copy for the"
              " donated parameter aliased to the output, one for the kernel's operand aliased to its result. A step"
              " taking `jax.grad` only, or `update_and_apply` on given grads, has none; `lax.optimization_barrier`"
              " around (loss, grads, params) does not remove them. The loss-and-grad alone and optax's step hold one"
              " copy each, by the same pattern (the reduction reads the donated params whose buffer the gradient or"
              " the new params overwrite), so make_train_step's share carries one copy more than optax's, and the"
              " experiment row, with none, is flattered by one copy. A copy reads and writes the params once (8 B/param"
              " against the kernel's 28 B/param for Adam) yet, by the estimates above, costs several times the"
              " kernel's whole share: on this CPU backend a param-sized copy into a fresh buffer is far slower than"
              " its traffic suggests.",
              "", "optax's step never writes the gradient: XLA computes `batch · p` inside optax's update loops (their"
              " fusions read the params and `batch`), whereas the kernel reads a gradient from memory, so the"
              " loss-and-grad subtracted from optax's step includes a write of the gradient that its step does not"
              " make (4 B/param), and adaptx's step makes it and reads it back (8 B/param).", ""]
    return lines


SECTION = HERE / "RESULTS_train_step.md"  # appended to RESULTS.md by benchmarks/report.py


def results_section(recorded, plain=None, plain_before=None):
    """The RESULTS.md section: headline ratios of this benchmark (a recorded JSON) and of plain_path's before → after."""
    f = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    out = ["## Training-step share and the plain path (benchmarks/train_step_share.py, benchmarks/plain_path.py)", "",
           f"[train_step_share.md](train_step_share.md) ({recorded['meta']['date']}, `{recorded['meta']['command']}`):"
           " the optimizer's share of a donated training step, step − loss-and-grad timed side by side.", "",
           "| target | adaptx/peer | limit | met |", "|---|---|---|---|"]
    for t in recorded["targets"]:
        limit = "= 1" if t["limit"] == "equal" else f"≤ {t['limit']}"
        out.append(f"| {t['target']} | {f(t['ratio'])} | {limit} | {'yes' if t['met'] else '**no**'} |")
    single = recorded["results"]["single"]
    ratios = ", ".join(f"{case} {f(c['runs'][LOSS_FIRST]['share_ms'] / c['runs']['optax']['share_ms'], 2)}"
                       for case, c in single.items())
    copies = sorted({c["runs"]["adaptx"]["hlo"]["copies_over_params"] for c in single.values()})
    out += ["", f"Why the one-leaf shares miss: make_train_step's compiled step copies the params"
            f" {'/'.join(f(c, 1) for c in copies)}× before the kernel (the loss's reduction reads them and is no"
            " input of the in-place custom call). Ordering the loss before the kernel (`grads + 0·loss`, the"
            f" experiment row) removes every copy; its share over optax's: {ratios}."]
    if plain is not None and plain_before is not None:
        rows = {t["target"]: t for t in plain["targets"]}
        before = {t["target"]: t for t in plain_before["targets"]}
        out += ["", f"[plain_path.md](plain_path.md) ({plain['meta']['date']}; before: [plain_path_before.md]"
                "(plain_path_before.md)): `tx.update` + `optax.apply_updates`, adaptx/optax before → after the"
                " core redesign:", "", "| target | before | after | met after |", "|---|---|---|---|"]
        for name, t in rows.items():
            if t["ratio"] is not None and name in before:
                out.append(f"| {name} | {f(before[name]['ratio'])} | {f(t['ratio'])} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(out) + "\n"


def write_section(recorded, out_dir=HERE):
    """Write RESULTS_train_step.md and put it at the end of RESULTS.md in ``out_dir`` (replacing an older copy)."""
    plain, before = (HERE / "plain_path.json"), (HERE / "plain_path_before.json")
    text = results_section(recorded, *(json.loads(p.read_text()) if p.exists() else None for p in (plain, before)))
    (out_dir / SECTION.name).write_text(text)
    results = out_dir / "RESULTS.md"
    if results.exists():
        current = results.read_text()
        heading = text.splitlines()[0]
        if heading in current:  # replace the older copy, keep whatever follows it
            start = current.index(heading)
            end = current.find("\n## ", start + 1)
            current = current[:start] + (current[end + 1:] if end >= 0 else "")
        results.write_text(current.rstrip("\n") + "\n\n" + text)
    return text


def _table(runs, f, with_build=False, peer="optax"):
    """The contenders of one case: step, share, the share over ``peer``'s, and what their compiled HLO holds."""
    o = runs.get(peer, {}).get("share_ms") if peer else None
    lines = ["| contender | step ms | share ms | share / " + (peer or "–") + " | full-size copies | copied / params bytes"
             " | fusions | kernel calls |" + (" trace+compile s | share s |" if with_build else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if with_build else "")]
    for name, r in runs.items():
        h = r.get("hlo", {})
        ratio = f(r["share_ms"] / o) if o and r.get("share_ms") is not None else "–"
        row = (f"| {r.get('impl', name) if name == 'torch' else name} | {f(r['median_ms'])} | {f(r.get('share_ms'))} | "
               f"{ratio} | {h.get('copies', '–')} | {f(h.get('copies_over_params'))} | {h.get('fusions', '–')} | "
               f"{h.get('kernel_calls', '–')} |")
        if with_build:
            row += f" {f(r.get('build_s'))} | {f(r.get('build_share_s'))} |"
        lines.append(row)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record train_step_share.md and .json in benchmarks/")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, few repeats; never writes here")
    ap.add_argument("--out", type=Path, default=None, help="folder for --write (default benchmarks/; --quick: a temp dir)")
    ap.add_argument("--render", type=Path, default=None,
                    help="re-render this recorded train_step_share.json instead of measuring (with --write: rewrite it)")
    args = ap.parse_args(argv)
    if args.render:
        recorded = json.loads(args.render.read_text())
        res, meta = recorded["results"], recorded["meta"]
    else:
        sizes = dict(n=1 << 12, leaves=6, reps=3, build_repeats=1, side=64) if args.quick else {}
        meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    command="python -m benchmarks.train_step_share " + " ".join(argv if argv is not None else sys.argv[1:]),
                    machine=machine(), load_start=load(),
                    versions=f"jax {jax.__version__}, optax {optax.__version__}, adaptx {adaptx.__version__} (one-pass"
                             f" kernel {'built' if adaptx.kernels.available() else 'unavailable: ' + str(adaptx.kernels.unavailable_reason())})")
        res = measure(**sizes)
        meta["load_end"] = load()
    text = markdown(res, meta)
    print(text)
    if args.write:
        out = results_folder(args.out, args.quick, "train-step-share")
        (out / "train_step_share.md").write_text(text)
        rows = [dict(target=r[0], adaptx=r[1], peer=r[2], ratio=r[3], limit=r[4], met=met(r)) for r in targets(res)]
        recorded = dict(meta=meta, results=res, targets=rows)
        (out / "train_step_share.json").write_text(json.dumps(recorded, indent=1) + "\n")
        print(f"wrote {out / 'train_step_share.md'} and {out / 'train_step_share.json'}")
        if not args.quick:
            write_section(json.loads(json.dumps(recorded)), out)
            print(f"wrote {out / SECTION.name}; its section ends {out / 'RESULTS.md'}")
    return res, text


if __name__ == "__main__":
    main()
