"""Multi-process training with adaptx on jax.distributed: data parallel, ZeRO-1 and FSDP on one global mesh.

    python examples/distributed.py [--processes 4] [--devices 2] [--steps 8] [--optimizer adam]
                                   [--checkpoint DIR]

Launches ``--processes`` local processes of ``--devices`` CPU devices each
(gloo collectives on 127.0.0.1, a free port), which train one MLP on a mesh
over all their devices in three layouts:

- ``data``: params and optimizer state replicated, the batch split;
- ``zero1``: params replicated, the state split across the devices (ZeRO stage 1);
- ``fsdp``: params and state split (each array along its first divisible dimension).

Process 0 then runs the same steps in one process on one device and prints,
per layout, the largest difference of the final params from that run (also
in ulps of each array's largest value: XLA sums the per-device gradients in
another order, and Adam's normalisation carries the rounding on) and the
optimizer state each process holds. Each layout's params digest (of
sharding-independent checksums) is printed: ZeRO-1 and FSDP run the same
arithmetic and agree bit for bit; data parallel may round differently. With ``--checkpoint DIR`` every step is saved to
``DIR/<layout>/step_<n>`` (each process writes its shards) and a run resumes
from the newest complete checkpoint there, on any process count.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

LAYOUTS = ("data", "zero1", "fsdp")
SIZES = (16, 32, 32, 4)
BATCH = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "rmsprop", "adamax", "nadam"))
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--checkpoint", help="save every step under this folder and resume from its newest")
    parser.add_argument("--no-reference", action="store_true", help="skip the single-process comparison")
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)  # set by the launcher
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args) -> int:
    """Start the processes, relay process 0's output, fail if any fails."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"}
    argv = [a for a in sys.argv[1:]]
    workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--process-id", str(i),
                                 "--port", str(port)], env=env,
                                stdout=None if i == 0 else subprocess.DEVNULL, stderr=None if i == 0 else subprocess.PIPE)
               for i in range(args.processes)]
    for i, w in enumerate(workers):
        print(f"process {i} pid {w.pid}", flush=True)
    codes = [w.wait() for w in workers]
    for i, (worker, code) in enumerate(zip(workers, codes)):
        if code and i:
            sys.stderr.write(f"process {i} failed ({code}):\n{worker.stderr.read().decode()[-3000:]}\n")
    return max(codes, key=abs)


def worker(args) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.processes, process_id=args.process_id)

    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import adaptx
    from adaptx import checkpoint
    from adaptx.sharding import shard_along

    def say(*words):
        if jax.process_index() == 0:
            print(*words, flush=True)

    tx = {"adam": lambda: adaptx.adam(1e-2), "adamw": lambda: adaptx.adamw(1e-2), "adamax": lambda: adaptx.adamax(),
          "sgd": lambda: adaptx.sgd(0.05, momentum=0.9), "rmsprop": lambda: adaptx.rmsprop(1e-2),
          "nadam": lambda: adaptx.nadam()}[args.optimizer]()
    rng = np.random.default_rng(0)  # every process draws the same host data
    host_params = [{"w": (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32), "b": np.zeros(n, np.float32)}
                   for m, n in zip(SIZES[:-1], SIZES[1:])]
    host_batches = [(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32),
                     rng.integers(0, SIZES[-1], BATCH).astype(np.int32)) for _ in range(args.steps)]

    def loss_fn(params, x, y):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        logits = x @ params[-1]["w"] + params[-1]["b"]
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, SIZES[-1]), axis=-1))

    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state, loss

    def put(host_tree, shardings):
        return jax.tree.map(lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index: a[index]),
                            host_tree, shardings)

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    say(f"{jax.process_count()} processes x {jax.local_device_count()} devices, MLP {SIZES}, {args.optimizer},"
        f" {args.steps} steps of batch {BATCH}")
    finals = {}
    for layout in args.layouts.split(","):
        shapes = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, host_params))
        param_sharding = shard_along(shapes, mesh, "data") if layout == "fsdp" else jax.tree.map(
            lambda _: replicated, shapes)
        state_shapes = jax.eval_shape(tx.init, shapes)
        state_sharding = jax.tree.map(lambda _: replicated, state_shapes) if layout == "data" else shard_along(
            state_shapes, mesh, "data")
        params = put(host_params, param_sharding)
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)
        jitted = jax.jit(step, out_shardings=(param_sharding, state_sharding, replicated))
        first, loss = 0, None
        folder = args.checkpoint and os.path.join(os.path.abspath(args.checkpoint), layout)
        if folder and os.path.isdir(folder) and (found := checkpoint.latest(folder)):
            started = time.perf_counter()
            params, state = checkpoint.restore(found, tx, params, state_shardings=state_sharding)
            first = int(np.asarray(state.count.addressable_data(0)))
            say(f"{layout}: restored step {first} from {found} in {time.perf_counter() - started:.2f} s,"
                f" params {digest(checkpoint.checksums(params))}")
        for n in range(first, args.steps):
            x, y = host_batches[n]
            params, state, loss = jitted(params, state, put(x, split), put(y, split))
            if folder:
                started = time.perf_counter()
                checkpoint.save(os.path.join(folder, f"step_{n + 1}"), params, state, overwrite=True)
                say(f"{layout}: saved step {n + 1} in {time.perf_counter() - started:.2f} s,"
                    f" params {digest(checkpoint.checksums(params))}")
        held = sum(shard.data.nbytes for leaf in jax.tree.leaves(state) for shard in leaf.addressable_shards)
        per_process = multihost_utils.process_allgather(np.int64(held))
        total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state_shapes))
        finals[layout] = multihost_utils.process_allgather(params, tiled=True)
        loss = "(no step left)" if loss is None else f"{float(np.asarray(loss.addressable_data(0))):.6f}"
        say(f"{layout}: final loss {loss}, params"
            f" {digest(checkpoint.checksums(params))}; optimizer state held per process"
            f" ({jax.local_device_count()} devices): {', '.join(f'{int(b):,}' for b in per_process)} bytes"
            f" (one copy: {total:,})")

    if args.no_reference or jax.process_index() != 0:
        return
    device = jax.local_devices()[0]  # the same steps in this process alone, on one device
    params = jax.device_put(host_params, device)
    state = jax.jit(tx.init)(params)
    for x, y in host_batches:
        params, state, _ = jax.jit(step)(params, state, jax.device_put(x, device), jax.device_put(y, device))
    reference = jax.tree.map(np.asarray, params)
    for layout, final in finals.items():
        worst, ulps = 0.0, 0.0
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
            difference = float(np.abs(a.astype(np.float64) - b).max())
            worst = max(worst, difference)
            ulps = max(ulps, difference / float(np.spacing(np.abs(b).max())))  # at the array's largest value
        say(f"{layout}: largest difference from one process: {worst:.3e} ({ulps:.1f} ulp of the largest param"
            f" over {args.steps} steps)")


def digest(checksums: dict) -> str:
    """One short hex string for a tree's checksums: equal exactly when every array is bit-identical (w.h.p.)."""
    import hashlib
    return hashlib.sha256(repr(sorted(checksums.items())).encode()).hexdigest()[:16]


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.process_id is None:
        sys.exit(launch(ARGS))
    worker(ARGS)
