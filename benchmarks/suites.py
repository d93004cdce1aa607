"""The three measured scenarios; each returns a list of flat records for the report."""
import jax
import jax.numpy as jnp
import optax

import adaptx
from benchmarks import steppers
from benchmarks.timing import compile_phases, interleaved, median_ms

# Bytes a single-pass step must move per parameter: read p, g and each moment,
# write p and each moment (float32 params unless the record says otherwise).
BYTES_PER_PARAM = {"adam": 28, "adagrad": 20, "rmsprop": 20}
LR = {"adam": 1e-3, "adagrad": 1e-2, "rmsprop": 1e-3}


def _records(suite, times, extra):
    return [dict(suite=suite, run=name, median_ms=median_ms(t), reps=len(t), **extra.get(name, {}))
            for name, t in times.items()]


def single_leaf(n: int, reps: int):
    """(a) + (d): one float32 leaf of ``n`` params; adaptx, optax and torch per optimizer, and the copy."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float32)
    grads = {"w": jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float32)}
    runs, extra = {"donated copy": steppers.donated_copy(x)}, {"donated copy": dict(bytes=8 * n)}
    for name in BYTES_PER_PARAM:
        meta = dict(optimizer=name, bytes=BYTES_PER_PARAM[name] * n)
        tx = steppers.adaptx_tx(name, LR[name])
        runs[f"adaptx {name}"] = steppers.donated(steppers.adaptx_fused_step(tx), tx, {"w": x}, grads)
        runs[f"adaptx two-step {name}"] = steppers.donated(
            steppers.two_step(tx, adaptx.apply_updates), tx, {"w": x}, grads)
        otx = steppers.optax_tx(name, LR[name])
        runs[f"optax {name}"] = steppers.donated(steppers.two_step(otx, optax.apply_updates), otx, {"w": x}, grads)
        torch_run, how = steppers.torch_step(name, [n], LR[name])
        if torch_run is not None:
            runs[f"torch {name}"] = torch_run
        for impl in ("adaptx", "adaptx two-step", "optax", "torch"):
            extra[f"{impl} {name}"] = dict(meta, impl=how if impl == "torch" else impl)
    return _records("single_leaf", interleaved(runs, reps), extra)


def mixed_sizes(leaves: int):
    """Leaf sizes as in shared/bench/anchors.py: 1024·(1 + i mod 16) float32 params."""
    return [1024 * (1 + i % 16) for i in range(leaves)]


def many_leaves(leaves: int, reps: int, two_step: bool = True):
    """(b): Adam on ``leaves`` leaves of mixed sizes: trace, lower and compile time, then step time."""
    sizes = mixed_sizes(leaves)
    params = {f"p{i:04d}": jnp.ones((s,), jnp.float32) for i, s in enumerate(sizes)}
    grads = jax.tree.map(lambda a: a * 0.1, params)
    tx, otx = adaptx.adam(1e-3), optax.adam(1e-3)
    flat = adaptx.flat_state(tx)
    contenders = {
        "adaptx": (steppers.adaptx_fused_step(tx), tx),
        "adaptx flat_state": (steppers.adaptx_fused_step(flat), flat),
        "optax": (steppers.two_step(otx, optax.apply_updates), otx),
    }
    if two_step:
        contenders["adaptx two-step"] = (steppers.two_step(tx, adaptx.apply_updates), tx)
    # What JAX and XLA cost for this many arrays whatever the step does: the
    # same signature, returning params and state untouched.
    contenders["floor: donated identity"] = (lambda p, s, g: (p, s), tx)
    contenders["floor: donated identity, flat state"] = (lambda p, s, g: (p, s), flat)
    runs, extra = {}, {}
    for name, (step_fn, t) in contenders.items():
        phases = compile_phases(jax.jit(step_fn, donate_argnums=(0, 1)), params, t.init(params), grads)
        compiled = phases.pop("compiled")
        hlo = compiled.as_text()
        phases.update(fusions=hlo.count(" fusion("), custom_calls=hlo.count(" custom-call("))
        runs[name] = steppers.donated(step_fn, t, params, grads, compiled=compiled)
        extra[name] = dict(phases, leaves=leaves, params=sum(sizes), bytes=28 * sum(sizes), optimizer="adam", impl=name)
    torch_run, how = steppers.torch_step("adam", sizes, 1e-3)
    if torch_run is not None:
        runs["torch"] = torch_run
        extra["torch"] = dict(leaves=leaves, params=sum(sizes), bytes=28 * sum(sizes), optimizer="adam", impl=how)
    return _records("many_leaves", interleaved(runs, reps), extra)


def bf16_params(n: int, reps: int):
    """(c): Adam on bfloat16 params with float32 moments against float32 params."""
    runs, extra = {}, {}
    for dtype, per_param in ((jnp.float32, 28), (jnp.bfloat16, 22)):  # bf16: 2+2 p, 2 g, 16 moments
        x = jax.random.normal(jax.random.PRNGKey(0), (n,), dtype)
        grads = {"w": jax.random.normal(jax.random.PRNGKey(1), (n,), dtype)}
        tx = adaptx.adam(1e-3)
        label = jnp.dtype(dtype).name
        runs[f"adaptx adam {label}"] = steppers.donated(steppers.adaptx_fused_step(tx), tx, {"w": x}, grads)
        runs[f"adaptx two-step adam {label}"] = steppers.donated(
            steppers.two_step(tx, adaptx.apply_updates), tx, {"w": x}, grads)
        for impl in ("adaptx", "adaptx two-step"):
            extra[f"{impl} adam {label}"] = dict(impl=impl, dtype=label, optimizer="adam", bytes=per_param * n)
    return _records("bf16", interleaved(runs, reps), extra)
