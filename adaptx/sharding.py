"""Laying optimizer state out over devices: ZeRO-1 style splitting and per-device accounting.

The state of every adaptx optimizer already follows its params' sharding
(eagerly and under ``jax.jit(tx.init)``), so data- or model-parallel params
need nothing from here. These helpers are for the other layout: params
replicated on every device, the optimizer state split across them (ZeRO
stage 1, Rajbhandari et al., 2020), which cuts each device's share of the
state by the size of the split axis.
"""
from collections import Counter
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def shard_along(tree: Any, mesh: Mesh, axis: str) -> Any:
    """A tree of ``NamedSharding`` splitting each leaf of ``tree`` along ``mesh`` axis ``axis``.

    Each array is split along its first dimension divisible by the axis size;
    scalars and arrays with no such dimension (counts, hyperparameters, odd
    shapes) are replicated. Put the state there with ``jax.device_put(state,
    shard_along(state, mesh, axis))`` and keep it there by passing the same
    tree as the state's ``out_shardings`` of the jitted step.
    """
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
    size = mesh.shape[axis]

    def sharding(leaf):
        shape = getattr(leaf, "shape", ())
        dim = next((d for d, n in enumerate(shape) if n >= size and n % size == 0), None)
        spec = PartitionSpec() if dim is None else PartitionSpec(*([None] * dim), axis)
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, tree)


def bytes_per_device(tree: Any) -> dict:
    """Bytes of ``tree``'s arrays held on each device, keyed by device.

    Counts the shards actually stored there, so a replicated array counts in
    full on every device and a split one only by its slice.
    """
    held = Counter()
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return dict(held)
