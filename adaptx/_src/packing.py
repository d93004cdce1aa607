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


def sizes(tree) -> Dict[str, int]:
    """dtype name -> the number of elements of that dtype in ``tree``."""
    out: Dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        name = jnp.dtype(leaf.dtype).name
        out[name] = out.get(name, 0) + int(np.prod(jnp.shape(leaf), dtype=np.int64))
    return out


def pack(tree, like=None) -> Dict[str, Any]:
    """{dtype name: every leaf of that dtype, raveled and concatenated in leaf order}.

    With ``like`` (a tree of the same structure, the params) the leaves are
    grouped by ``like``'s dtypes instead: a float32 moment of bfloat16 params
    goes into the "bfloat16" buffer, the layout the kernel reads.
    """
    leaves = jax.tree.leaves(tree)
    return {name: jnp.concatenate([jnp.ravel(leaves[i]) for i, _ in where])
            for name, where in layout(tree if like is None else like).items()}


def unpack(flat: Dict[str, Any], like) -> Any:
    """The inverse of :func:`pack`: a tree shaped like ``like`` cut from ``flat``."""
    leaves, treedef = jax.tree.flatten(like)
    out = list(leaves)
    for name, where in layout(like).items():
        for i, offset in where:
            size = leaves[i].size
            out[i] = jax.lax.slice(flat[name], (offset,), (offset + size,)).reshape(leaves[i].shape)
    return treedef.unflatten(out)
