"""The 8-device case of ``benchmarks/train_step_share.py``, run there in a subprocess of its own.

XLA fixes the device count when jax starts, so this sets 8 simulated CPU
devices before importing jax. One float32 ``(side, side)`` leaf sharded
``P("data", "model")`` over a 2×4 mesh (Auto axes), Adam: ``make_train_step``
against the plain path (the standard step with ``tx.update`` +
``adaptx.apply_updates``), optax's standard step and the loss-and-grad alone,
taking turns. Prints one JSON line: medians, shares, HLO summaries, bytes per
device of (params, state) after the timed steps, all-gathers in the compiled
adaptx step. ``python -m benchmarks.train_step_share_sharded [--side 2048] [--reps 41]``
"""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402  (the flag above must be set first)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import adaptx  # noqa: E402
from adaptx import sharding  # noqa: E402
from benchmarks import train_step_share as share  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=41)
    args = ap.parse_args(argv)
    assert jax.device_count() == 8, jax.devices()
    axis_type = AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
        x = jax.random.normal(jax.random.PRNGKey(0), (args.side, args.side), jnp.float32)
        params = {"w": jax.device_put(x, NamedSharding(mesh, P("data", "model")))}
        batch = jnp.float32(1.0)
        tx = adaptx.adam(1e-3)
        cands = share.contenders(tx, optax.adam(1e-3), params, batch)
        adaptx_hlo = cands["adaptx"][0].lower(*cands["adaptx"][1]).compile().as_text()
        info = share.time_case(cands, params, batch, args.reps)
        # bytes per device after a few more steps of each path, from the same start
        held = {}
        for name, who in (("adaptx", adaptx.make_train_step(share.loss_fn, tx)),
                          ("plain", share.standard_step(tx, adaptx.apply_updates))):
            p, s = share.copy_params(params), tx.init(params)
            for _ in range(3):
                p, s, _ = who(p, s, batch)
            held[name] = [v for _, v in sorted(sharding.bytes_per_device((p, s)).items(), key=lambda kv: kv[0].id)]
        res = dict(side=args.side, devices=jax.device_count(), axis_type=axis_type.name,
                   explain=adaptx.kernels.explain(tx, params), runs=info, bytes_per_device=held,
                   all_gathers=adaptx_hlo.count("all-gather"))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
