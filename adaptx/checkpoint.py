"""Checkpoints of ``(params, opt_state)`` with orbax-checkpoint, checked against the optimizer they restore into.

The state holds everything an update reads, hyperparameters and step counts
included, so a run restored from a checkpoint continues bit-identically.
orbax-checkpoint is optional: ``pip install 'adaptx[checkpoint]'``.
"""
import contextlib
import os
from typing import Any, Optional

import jax

from adaptx._src.validate import check_tree_match
from adaptx._src.base import GradientTransformation


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(
            "adaptx.checkpoint needs orbax-checkpoint: pip install 'adaptx[checkpoint]'"
        ) from error
    return ocp


def _abstract(tree: Any) -> Any:
    """Shape, dtype and (where known) sharding of each array in ``tree``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


def abstract_state(tx: GradientTransformation, params: Any, shardings: Optional[Any] = None) -> Any:
    """The shape, dtype and sharding of each leaf of ``tx.init(params)``, allocating nothing.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct`` s; the shardings are
    those ``jax.jit(tx.init)`` gives (the params' own for per-param state),
    unless a tree of ``shardings`` (e.g. from :func:`adaptx.sharding.shard_along`) is given.
    """
    shapes = jax.eval_shape(tx.init, params)
    if shardings is None:
        shardings = jax.jit(tx.init).lower(params).compile().output_shardings
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        shapes, shardings)


def check_state(tx: GradientTransformation, params: Any, state: Any) -> None:
    """Raise ValueError naming the first array where ``state`` is not a state ``tx`` makes for ``params``."""
    _check_layout(state, jax.eval_shape(tx.init, params), "the given state", "the state this optimizer makes",
                  "use the optimizer, and params, that made the state")


def _check_layout(got: Any, want: Any, got_name: str, want_name: str, advice: str) -> None:
    """Raise ValueError naming the first array one tree has and the other lacks, or whose shape differs.

    Arrays are matched by dotted path, so a NamedTuple state and the dicts
    orbax writes it as compare equal.
    """
    got, want = _by_name(got), _by_name(want)
    lacking = [name for name in want if name not in got]
    extra = [name for name in got if name not in want]
    if lacking or extra:
        differences = ([f"{want_name} has {_some(lacking)} that {got_name} lacks"] if lacking else []) + (
            [f"{got_name} has {_some(extra)} that {want_name} lacks"] if extra else [])
        raise ValueError(f"{' and '.join(differences)}: {advice}")
    check_tree_match(got, want, want_name.removeprefix("the "), subject=f"arrays in {got_name}", advice=advice)


def _some(names: list) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _dotted(path) -> str:
    """A key path as orbax names the array on disk: ``opt_state.1.inner_state.0.mu.w``."""
    return ".".join(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key)))) for key in path)


def _by_name(tree: Any) -> dict:
    """``tree``'s leaves keyed by their dotted path."""
    return {_dotted(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save(directory: str, params: Any, opt_state: Any, *, overwrite: bool = False) -> None:
    """Write ``params`` and ``opt_state`` to ``directory`` and wait until they are on disk.

    Zero-size arrays cannot be stored by orbax; ``overwrite`` replaces an
    existing checkpoint instead of raising.
    """
    ocp = _orbax()
    with contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        checkpointer.save(os.path.abspath(directory), {"params": params, "opt_state": opt_state}, force=overwrite)
        checkpointer.wait_until_finished()


def restore(
    directory: str, tx: GradientTransformation, params: Any, *, state_shardings: Optional[Any] = None
) -> tuple[Any, Any]:
    """Read back ``(params, opt_state)`` written by :func:`save`, laid out for ``tx``.

    ``params`` (arrays or ``jax.ShapeDtypeStruct`` s) gives the shapes, dtypes
    and shardings to restore onto; the state follows them (or
    ``state_shardings``). A checkpoint written by a different optimizer, or
    for different params, raises ValueError naming the first array that differs.
    """
    ocp = _orbax()
    target = {"params": _abstract(params), "opt_state": abstract_state(tx, params, state_shardings)}
    path = os.path.abspath(directory)
    with contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        saved = checkpointer.metadata(path).item_metadata.tree
        _check_layout(saved, target, "the checkpoint", "the optimizer restored into",
                      "restore with the optimizer, and params, that wrote the checkpoint")
        restored = checkpointer.restore(path, target)
    return restored["params"], restored["opt_state"]
