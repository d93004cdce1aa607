"""Every family optimizer on 8 simulated CPU devices; run by tests/wrappers/test_family_integration.py in a
process of its own (XLA fixes the device count when jax starts).

Each method takes 3 jitted steps with params sharded over a 2×4 mesh and again with the same
params on one device; the state must follow the params' shardings and the numbers must agree
within harness.rounding_bound for two float32 programs (a sharded program may reduce and fuse
differently). Prints ``PASS <method>`` per method; any failure raises.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (the flag above must be set first)
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # its test module, and tests/ for harness
from harness import assert_trees_within, step_cost  # noqa: E402
from test_family_integration import FAMILY, STEPS, grads_of  # noqa: E402

LAYOUT = {"w": ((8, 4), P("data", "model")), "b": ((4,), P("model"))}


def train(tx, params, data):
    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads_of(params, data), state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    state = tx.init(params)
    for _ in range(STEPS):
        params, state = step(params, state)
    return params, state


def main():
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    rng = np.random.default_rng(0)
    host = {name: rng.standard_normal(shape).astype(np.float32) for name, (shape, _) in LAYOUT.items()}
    data = ({k: (10.0 ** rng.uniform(-2, 2, v.shape)).astype(np.float32) for k, v in host.items()},
            {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()})
    sharded = {k: jax.device_put(v, NamedSharding(mesh, LAYOUT[k][1])) for k, v in host.items()}
    single = {k: jax.device_put(v, jax.devices()[0]) for k, v in host.items()}
    for name, make in FAMILY.items():
        got, state = train(make(), sharded, data)
        want, want_state = train(make(), single, data)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            if leaf.shape in ((8, 4), (4,)):
                spec = LAYOUT["w" if leaf.shape == (8, 4) else "b"][1]
                assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim), (
                    name, jax.tree_util.keystr(path), leaf.sharding)
        ops, transcendentals = step_cost(name)
        # + the loss's elementwise gradient a·(x − c), 2 operations
        assert_trees_within(got, want, STEPS, ops + 2, transcendentals, what=f"{name} params ")
        assert_trees_within(state, want_state, STEPS, ops + 2, transcendentals, what=f"{name} state ")
        print("PASS", name, flush=True)


if __name__ == "__main__":
    main()
