"""ZeRO-1 with adaptx: params replicated on every device, Adam's state split across the data axis.

    python examples/zero1_sharding.py [--devices 8] [--steps 20]

Without accelerators it simulates the devices on the CPU. Each device keeps
only its slice of the two moment buffers, the jitted step updates the slice
and all-gathers the new params; the losses match a run with the state
replicated. Prints the optimizer state each device holds in both layouts.
"""
import argparse
import os


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="CPU devices to simulate when no accelerator is present")
    parser.add_argument("--steps", type=int, default=20)
    return parser.parse_args()


ARGS = parse_args()
# Must precede the first jax import: XLA fixes the host device count when it starts.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import adaptx  # noqa: E402
from adaptx.sharding import bytes_per_device, shard_along  # noqa: E402

SIZES = (256, 512, 512, 10)


def init_mlp(key):
    keys = jax.random.split(key, len(SIZES) - 1)
    return [{"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros((n,))}
            for k, m, n in zip(keys, SIZES[:-1], SIZES[1:])]


def loss_fn(params, x, y):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, SIZES[-1]), axis=-1))


def run(tx, params, state, batches, param_sharding, state_sharding):
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return adaptx.apply_updates(params, updates), state, loss

    # Pinning the output layouts is all ZeRO-1 takes: XLA updates each device's
    # slice of the state and all-gathers the new params.
    step = jax.jit(step, out_shardings=(param_sharding, state_sharding, None))

    losses = []
    for x, y in batches:
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    return params, state, losses


def main():
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    key_params, key_data = jax.random.split(jax.random.key(0))
    params = jax.device_put(init_mlp(key_params), replicated)
    key_x, key_y = jax.random.split(key_data)
    # One batch, split across the devices, fitted again every step: its loss must fall.
    x = jax.device_put(jax.random.normal(key_x, (8 * jax.device_count(), SIZES[0])), batch)
    y = jax.device_put(jax.random.randint(key_y, (8 * jax.device_count(),), 0, SIZES[-1]), batch)
    batches = [(x, y)] * ARGS.steps

    tx = adaptx.adam(1e-3)
    layouts = {
        "replicated": jax.tree.map(lambda _: replicated, jax.eval_shape(tx.init, params)),
        "ZeRO-1": shard_along(jax.eval_shape(tx.init, params), mesh, "data"),
    }
    results = {}
    for name, state_sharding in layouts.items():
        state = jax.device_put(tx.init(params), state_sharding)
        _, state, losses = run(tx, params, state, batches, replicated, state_sharding)
        results[name] = (max(bytes_per_device(state).values()), losses)

    held_replicated, losses_replicated = results["replicated"]
    held_zero1, losses_zero1 = results["ZeRO-1"]
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"{jax.device_count()} devices, MLP {SIZES} with {n_params:,} params, adam, {ARGS.steps} steps")
    print(f"optimizer state per device, replicated: {held_replicated:>12,} bytes")
    print(f"optimizer state per device, ZeRO-1:     {held_zero1:>12,} bytes")
    print(f"saved per device:                       {held_replicated - held_zero1:>12,} bytes"
          f" ({held_replicated / held_zero1:.1f}x less)")
    print(f"loss {losses_zero1[0]:.4f} -> {losses_zero1[-1]:.4f}; largest difference from the replicated run:"
          f" {max(abs(a - b) for a, b in zip(losses_zero1, losses_replicated)):.2e}")


if __name__ == "__main__":
    main()
