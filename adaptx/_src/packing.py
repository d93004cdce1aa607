"""Pack a pytree's leaves into one flat buffer per dtype, and back."""
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def layout(tree) -> Dict[str, List[Tuple[int, int]]]:
    """dtype name -> [(index among the tree's leaves, offset in that dtype's buffer)], in leaf order."""
    groups: Dict[str, List[Tuple[int, int]]] = {}
    sizes: Dict[str, int] = {}
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        name = jnp.dtype(leaf.dtype).name
        groups.setdefault(name, []).append((i, sizes.get(name, 0)))
        sizes[name] = sizes.get(name, 0) + int(np.prod(jnp.shape(leaf), dtype=np.int64))
    return dict(sorted(groups.items()))


def pack(tree) -> Dict[str, Any]:
    """{dtype name: every leaf of that dtype, raveled and concatenated in leaf order}."""
    leaves = jax.tree.leaves(tree)
    return {name: jnp.concatenate([jnp.ravel(leaves[i]) for i, _ in where])
            for name, where in layout(tree).items()}


def unpack(flat: Dict[str, Any], like) -> Any:
    """The inverse of :func:`pack`: a tree shaped like ``like`` cut from ``flat``."""
    leaves, treedef = jax.tree.flatten(like)
    out = list(leaves)
    for name, where in layout(like).items():
        for i, offset in where:
            size = leaves[i].size
            out[i] = jax.lax.slice(flat[name], (offset,), (offset + size,)).reshape(leaves[i].shape)
    return treedef.unflatten(out)
