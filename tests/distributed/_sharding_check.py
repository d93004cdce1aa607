"""Sharding checks on 8 simulated CPU devices; run by tests/distributed/test_sharding.py in a process of its own.

XLA fixes the device count when jax starts, so these cannot share the
single-device pytest process. Prints ``PASS <check>`` per check; any failure
raises (non-zero exit).
"""
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (the flag above must be set first)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import adaptx  # noqa: E402
from adaptx import checkpoint, sharding  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness
from harness import assert_trees_within, step_cost  # noqa: E402

OPTIMIZERS = {
    "sgd": adaptx.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": adaptx.adagrad(0.1),
    "rmsprop": adaptx.rmsprop(0.01, centered=True, momentum=0.9),
    "adam": adaptx.adam(1e-2, amsgrad=True),
    "adamw": adaptx.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "adadelta": adaptx.adadelta(),
    "adamax": adaptx.adamax(),
    "nadam": adaptx.nadam(),
    "clipped adam, skipping non-finite steps": adaptx.skip_nonfinite(
        adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(1e-2)), max_consecutive=3),
    "accumulated rmsprop": adaptx.accumulate_gradients(adaptx.rmsprop(1e-2), 2),
    "partitioned": adaptx.partition({"body": adaptx.adam(1e-2), "head": adaptx.sgd(0.1, momentum=0.9)},
                                    {"w": "body", "b": "head", "s": "head", "h": "body"}),
}

# Distinct shapes, so each state leaf can be matched to its param by shape.
LAYOUT = {"w": ((8, 16), P("data", "model")), "b": ((16,), P("model")), "s": ((), P()),
          "h": ((6, 4), P(None, "model"))}


def params_on(mesh):
    rng = np.random.default_rng(0)
    return {name: jax.device_put(jnp.asarray(rng.standard_normal(shape), jnp.bfloat16 if name == "h" else jnp.float32),
                                 NamedSharding(mesh, spec)) for name, (shape, spec) in LAYOUT.items()}


def assert_follows(state, params, what):
    """Per-param leaves have their param's sharding; scalars are replicated."""
    by_shape = {p.shape: p.sharding for p in jax.tree.leaves(params)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = f"{what}{jax.tree_util.keystr(path)}"
        if leaf.ndim == 0:
            assert leaf.sharding.is_fully_replicated, f"{where} is not replicated: {leaf.sharding}"
        else:
            assert leaf.sharding.is_equivalent_to(by_shape[leaf.shape], leaf.ndim), (
                f"{where} has {leaf.sharding}, its param {by_shape[leaf.shape]}")


def train(tx, params, grads, steps=3):
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g))
    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state, grads)
    return params, state


def _apply(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return adaptx.apply_updates(params, updates), state


# Per optimizer, its step's (ops, transcendentals) (harness.STEP_COST): a sharded program may fuse
# and vectorise differently from the one-device one, so two float32 programs (and the bfloat16
# leaf's roundings), over the 3 steps train takes.
COST = {"rmsprop": step_cost("rmsprop"), "adam": step_cost("adam"),
        "accumulated rmsprop": (step_cost("rmsprop")[0] + 2, 0),  # the mean of 2 gradients
        "partitioned": step_cost("adam")}


def assert_equal(got, want, what, cost=COST["adam"], steps=3):
    assert_trees_within(jax.device_get(got), jax.device_get(want), steps, *cost, what=what)


def assert_kernel_matches(got, want, what, bfloat16_shape=None):
    """Within float32 rounding; leaves of ``bfloat16_shape`` (a bfloat16 param's) within bfloat16's.

    XLA may keep a bfloat16 intermediate (a clipped gradient) in float32
    (``xla_allow_excess_precision``) where the kernel path stores it: one
    bfloat16 rounding apart.
    """
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        rtol = 2.0 ** -7 if bfloat16_shape is not None and np.shape(a) == bfloat16_shape else 1e-6
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=1e-7,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def check_state_follows_params(axis_type, names, stepped):
    """init (eager and jitted) of each of ``names``, and 3 jitted steps of each of ``stepped``."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    params = params_on(mesh)
    grads = jax.tree.map(lambda p: (0.1 * p + 0.01).astype(p.dtype), params)
    one_device = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), (params, grads))
    references = {name: train(OPTIMIZERS[name], *one_device) for name in stepped}
    bitwise = []
    with jax.set_mesh(mesh):
        for name in names:
            assert_follows(OPTIMIZERS[name].init(params), params, f"{name}: eager init ")
            assert_follows(jax.jit(OPTIMIZERS[name].init)(params), params, f"{name}: jitted init ")
        for name in stepped:
            result = train(OPTIMIZERS[name], params, grads)
            assert_follows(result[1], params, f"{name}: state after 3 jitted steps ")
            assert_follows(result[0], params, f"{name}: params after 3 jitted steps ")
            assert_equal(result, references[name], f"{name}: (params, state) vs one device ", COST[name])
            if all(map(np.array_equal, jax.tree.leaves(result), jax.tree.leaves(references[name]))):
                bitwise.append(name)
    print(f"PASS state follows params ({axis_type.name} mesh 2x4; init of {len(names)} optimizers, 3 steps of"
          f" {len(stepped)}; bit-identical to one device: {', '.join(bitwise) or 'none'}; the rest within the float32 bound)")


KERNEL_OPTIMIZERS = {
    "adam": adaptx.adam(1e-2),
    "adagrad": adaptx.adagrad(0.1),
    "rmsprop": adaptx.rmsprop(1e-2),
    "clipped adam": adaptx.chain(adaptx.clip_by_global_norm(1.0), adaptx.adam(1e-2)),
    "masked adamw": adaptx.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "skip_nonfinite(adam)": adaptx.skip_nonfinite(adaptx.adam(1e-2)),
    "accumulated adam": adaptx.accumulate_gradients(adaptx.adam(1e-2), 2),
}


def _loss(params, batch):
    return sum(jnp.sum(jnp.sin(x.astype(jnp.float32)) * batch) for x in jax.tree.leaves(params))


def check_kernel_keeps_shardings(axis_type):
    """make_train_step runs the kernel shard by shard: no gather, layouts kept, the plain path's numbers."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    start = params_on(mesh)
    with jax.set_mesh(mesh):
        for name, tx in KERNEL_OPTIMIZERS.items():
            fast = adaptx.make_train_step(_loss, tx, require_kernel=True)
            plain = jax.jit(lambda p, s, b, tx=tx: (*_apply(tx, p, s, jax.grad(_loss)(p, b)), 0.0))
            hlo = fast.lower(start, tx.init(start), 1.0).compile().as_text()
            assert "all-gather" not in hlo and "adaptx_fused_step" in hlo, f"{name}: {hlo.count('all-gather')} gathers"
            results = []
            for step in (fast, plain):
                params, state = jax.tree.map(jnp.copy, start), tx.init(start)
                for _ in range(3):
                    params, state, _ = step(params, state, 1.0)
                results.append((params, state))
            (params, state), want = results
            assert_follows(state, start, f"{name}: state after 3 kernel steps ")
            assert_follows(params, start, f"{name}: params after 3 kernel steps ")
            assert sharding.bytes_per_device((params, state)) == sharding.bytes_per_device(want), name
            assert_kernel_matches((params, state), want, f"{name}: kernel vs plain path ", LAYOUT["h"][0])
        try:
            adaptx.flat_state(adaptx.adam(1e-2)).init(start)
        except ValueError as error:
            assert "flat_state cannot hold sharded params" in str(error), error
        else:
            raise AssertionError("flat_state accepted sharded params")
    print(f"PASS kernel keeps shardings ({axis_type.name} mesh 2x4; {len(KERNEL_OPTIMIZERS)} optimizers, no"
          " all-gather, same bytes per device and numbers as the plain path; flat_state refuses)")


def check_zero1():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    start = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,)), "odd": jnp.ones((3,))}
    grads = jax.tree.map(lambda p: 0.01 * p, start)
    tx = adaptx.adam(1e-2)
    params = jax.device_put(start, replicated)
    state_shardings = sharding.shard_along(jax.eval_shape(tx.init, params), mesh, "data")
    state = jax.device_put(tx.init(params), state_shardings)
    step = jax.jit(lambda p, s, g: _apply(tx, p, s, g), out_shardings=(replicated, state_shardings))
    for _ in range(3):
        params, state = step(params, state, jax.device_put(grads, replicated))
    mu = state.inner_state[0].mu
    assert mu["w"].sharding.spec == P("data") and mu["b"].sharding.spec == P("data"), mu["w"].sharding
    assert mu["odd"].sharding.is_fully_replicated and params["w"].sharding.is_fully_replicated
    want_params, want_state = train(tx, start, grads)
    assert_equal((params, state), (want_params, want_state), "ZeRO-1 vs one device ")
    held = sharding.bytes_per_device(state)
    full = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert len(held) == 8 and max(held.values()) < full / 4, (held, full)
    print(f"PASS ZeRO-1 (state {full} B in all, {max(held.values())} B on each device)")


def check_sharded_checkpoint():
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    params = params_on(mesh)
    tx = OPTIMIZERS["adam"]
    grads = jax.tree.map(lambda p: (0.1 * p).astype(p.dtype), params)
    params, state = train(tx, params, grads, steps=2)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint.save(os.path.join(directory, "step2"), params, state)
        restored_params, restored_state = checkpoint.restore(os.path.join(directory, "step2"), tx, params)
    assert_follows(restored_state, params, "restored state ")
    for a, b in zip(jax.tree.leaves((restored_params, restored_state)), jax.tree.leaves((params, state))):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim) and np.array_equal(a, b)
    print("PASS sharded checkpoint restores onto the same shardings")


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    checks = sys.argv[1:] or ["auto", "explicit", "zero1", "checkpoint", "kernel-auto", "kernel-explicit"]
    for check in checks:
        {"auto": lambda: check_state_follows_params(
            AxisType.Auto, list(OPTIMIZERS), ["rmsprop", "adam", "accumulated rmsprop", "partitioned"]),
         "explicit": lambda: check_state_follows_params(AxisType.Explicit, ["sgd", "adam"], ["adam"]),
         "zero1": check_zero1,
         "kernel-auto": lambda: check_kernel_keeps_shardings(AxisType.Auto),
         "kernel-explicit": lambda: check_kernel_keeps_shardings(AxisType.Explicit),
         "checkpoint": check_sharded_checkpoint}[check]()
