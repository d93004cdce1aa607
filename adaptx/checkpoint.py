"""Checkpoints of ``(params, opt_state)`` with orbax-checkpoint: crash-safe, verified, multi-process.

The state holds everything an update reads, hyperparameters and step counts
included, so a run restored from a checkpoint continues bit-identically.
orbax-checkpoint is optional: ``pip install 'adaptx[checkpoint]'``.

Beside orbax's files each checkpoint holds ``adaptx.json``, written last: a
checksum, dtype and shape per array and the optimizer's identity (the state's
NamedTuple types and hyperparameter names). A directory without it is not a
complete checkpoint. ``save(..., overwrite=True)`` writes the new checkpoint
beside the old one (``DIR.adaptx-new``), renames the old aside
(``DIR.adaptx-old``), renames the new into place, then deletes the old, so a
crash at any moment leaves a complete checkpoint that :func:`restore` and
:func:`latest` find. Under ``jax.distributed`` every process calls ``save``
and ``restore`` with its part of the global arrays; orbax writes each
process's shards and process 0 does the renames.
"""
import contextlib
import json
import os
import shutil
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaptx._src.validate import check_tree_match
from adaptx._src.base import GradientTransformation

MANIFEST = "adaptx.json"
_NEW, _OLD = ".adaptx-new", ".adaptx-old"
_ORBAX_TMP = ".orbax-checkpoint-tmp"


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


def _key(key) -> str:
    return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def _dotted(path) -> str:
    """A key path as orbax names the array on disk: ``opt_state.1.inner_state.0.mu.w``."""
    return ".".join(_key(key) for key in path)


def _by_name(tree: Any) -> dict:
    """``tree``'s leaves keyed by their dotted path."""
    return {_dotted(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------- identity and checksums

def _identity(tree: Any, prefix: str = "") -> dict:
    """``{dotted path: NamedTuple type name}`` of every NamedTuple in ``tree``, and their hyperparameter names.

    Two optimizers whose states hold the same arrays (Adam and AdaMax) still
    differ here: each block keeps its own state type.
    """
    types, hyperparams = {}, {}

    def walk(node, path):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            types[path] = type(node).__name__
            if isinstance(getattr(node, "hyperparams", None), dict):
                hyperparams[path] = sorted(node.hyperparams)
            children = ((field, getattr(node, field)) for field in node._fields)
        elif isinstance(node, (list, tuple)):
            children = enumerate(node)
        elif isinstance(node, dict):
            children = node.items()
        else:
            return
        for key, child in children:
            walk(child, f"{path}.{key}" if path else str(key))

    walk(tree, prefix)
    return {"types": types, "hyperparams": hyperparams}


_MULTIPLIERS = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))


def _words(x: jax.Array) -> jax.Array:
    """``x``'s bits as uint32, one word per element (two for 64-bit dtypes, in a last axis)."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size < 4:
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of two words


def _checksum(x: jax.Array) -> jax.Array:
    """Two uint32 sums of each word times an odd number drawn from its position, modulo 2³².

    Integer sums wrap exactly and in any order, so the checksum is the same
    however the array is sharded, over any number of processes; a flipped bit
    changes a word by 2ᵏ, and 2ᵏ times an odd number is never 0 modulo 2³².
    """
    words = _words(x)
    position = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(words.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim) * np.uint32(stride % 2**32)
        stride *= words.shape[dim]
    sums = []
    for multiplier in _MULTIPLIERS:
        odd = (position * multiplier + np.uint32(0x6A09E667)) | np.uint32(1)
        mixed = words ^ (words >> np.uint32(15)) if sums else words
        sums.append(jnp.sum(mixed * odd, dtype=jnp.uint32))
    return jnp.stack(sums)


@jax.jit
def _checksums_jit(leaves):
    return [_checksum(x) for x in leaves]


def checksums(tree: Any) -> dict:
    """``{dotted path: 16 hex digits}`` per array of ``tree``, the same on any sharding and process count.

    The checksums :func:`save` records and :func:`restore` checks. Under
    ``jax.distributed`` it is a collective: every process calls it.
    """
    named = _by_name(tree)
    try:
        sums = _checksums_jit(list(named.values()))
    except ValueError:  # leaves committed to different devices: one program each
        sums = [_checksums_jit([leaf])[0] for leaf in named.values()]
    return {name: "".join(f"{int(word):08x}" for word in np.asarray(_local(s)))
            for name, s in zip(named, sums)}


def _local(x):
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


# ---------------------------------------------------------------- the files on disk

def _read_manifest(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, MANIFEST)) as file:
            return json.load(file)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _write_manifest(path: str, manifest: dict) -> None:
    """Atomically: the manifest is complete when it appears, and it appears last."""
    partial = os.path.join(path, MANIFEST + ".partial")
    with open(partial, "w") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, os.path.join(path, MANIFEST))
    _fsync_directory(path)


def _fsync_directory(path: str) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(path: str) -> None:
    """Delete a checkpoint directory, its manifest first: a half-deleted one is never taken for complete."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.remove(os.path.join(path, MANIFEST))
    shutil.rmtree(path, ignore_errors=True)


def _complete(path: str) -> Optional[dict]:
    """The manifest of the complete checkpoint at ``path``, or None."""
    return _read_manifest(path)


def _newest_complete(directory: str) -> Optional[tuple[str, dict]]:
    """``directory`` if complete, else the newest complete one an interrupted overwrite left beside it."""
    found = [(path, m) for path in (directory, directory + _NEW, directory + _OLD)
             if (m := _complete(path)) is not None]
    if not found:
        return None
    if found[0][0] == directory:
        return found[0]
    return max(found, key=lambda item: item[1]["written_ns"])


def _recover(directory: str) -> None:
    """Process 0, before a save: finish an interrupted overwrite and clear what it left."""
    best = _newest_complete(directory)
    if best is not None and best[0] != directory:
        if os.path.lexists(directory):
            _remove(directory)
        os.rename(best[0], directory)
        _fsync_directory(os.path.dirname(directory))
    parent, name = os.path.split(directory)
    for entry in os.listdir(parent) if os.path.isdir(parent) else ():
        if entry in (name + _NEW, name + _OLD) or entry.startswith((name + _ORBAX_TMP, name + _NEW + _ORBAX_TMP)):
            _remove(os.path.join(parent, entry))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------- save, restore, latest

def save(directory: str, params: Any, opt_state: Any, *, overwrite: bool = False) -> None:
    """Write ``params`` and ``opt_state`` to ``directory`` and wait until they are on disk.

    With ``overwrite`` an existing checkpoint is replaced, never removed
    before the new one is complete; without, an existing one raises
    FileExistsError. Under ``jax.distributed`` call it on every process.
    orbax cannot store zero-size arrays.
    """
    ocp = _orbax()
    directory = os.path.abspath(os.fspath(directory))
    primary = jax.process_index() == 0
    if primary:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        _recover(directory)
    _sync(f"adaptx.checkpoint.save {directory}: recovered")
    if os.path.lexists(directory) and not overwrite:
        raise FileExistsError(f"{directory} already exists: pass overwrite=True to replace it")
    tree = {"params": params, "opt_state": opt_state}
    manifest = {
        "format": "adaptx.checkpoint", "version": 1, "written_ns": time.time_ns(),
        "processes": jax.process_count(),
        "optimizer": _identity(opt_state, "opt_state"),
        "arrays": {name: {"dtype": str(jnp.dtype(leaf.dtype)), "shape": list(np.shape(leaf)), "checksum": checksum}
                   for (name, leaf), checksum in zip(_by_name(tree).items(), checksums(tree).values())},
    }
    new = directory + _NEW
    with contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        checkpointer.save(new, tree, force=True)
        checkpointer.wait_until_finished()
    if primary:
        _write_manifest(new, manifest)
        if os.path.lexists(directory):
            os.rename(directory, directory + _OLD)
        os.rename(new, directory)
        _fsync_directory(os.path.dirname(directory))
        _remove(directory + _OLD)
    _sync(f"adaptx.checkpoint.save {directory}: done")


def latest(root: str) -> Optional[str]:
    """The newest complete checkpoint directly under ``root`` (by when it was written), or None.

    Counts a checkpoint an interrupted ``save(..., overwrite=True)`` left
    beside its directory under that directory's name, as :func:`restore` reads it.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoint directory {root}")
    names = {entry.removesuffix(_NEW).removesuffix(_OLD) for entry in os.listdir(root)
             if _ORBAX_TMP not in entry and not entry.endswith(".partial")}
    found = [(m["written_ns"], os.path.join(root, name)) for name in names
             if (best := _newest_complete(os.path.join(root, name))) is not None for m in [best[1]]]
    return max(found)[1] if found else None


def restore(
    directory: str, tx: GradientTransformation, params: Any, *, state_shardings: Optional[Any] = None,
    cast: bool = False,
) -> tuple[Any, Any]:
    """Read back ``(params, opt_state)`` written by :func:`save`, laid out for ``tx`` and verified.

    ``params`` (arrays or ``jax.ShapeDtypeStruct`` s) gives the shapes, dtypes
    and shardings to restore onto, on any mesh and process count; the state
    follows them (or ``state_shardings``). Raises FileNotFoundError when there
    is no checkpoint at ``directory`` and ValueError naming the path and the
    first array that differs when the checkpoint is incomplete, was written
    by another optimizer or for other params, holds another dtype (``cast``
    converts instead) or does not match its checksums.
    """
    ocp = _orbax()
    directory = os.path.abspath(os.fspath(directory))
    found = _newest_complete(directory)
    if found is None:
        if not os.path.lexists(directory):
            raise FileNotFoundError(f"no checkpoint at {directory}")
        raise ValueError(f"{directory} is not a complete checkpoint (it has no {MANIFEST}): its save was interrupted,"
                         " or it was not written by adaptx.checkpoint.save")
    path, manifest = found
    where = f"the checkpoint {path}"
    advice = "restore with the optimizer, and params, that wrote the checkpoint"
    target = {"params": _abstract(params), "opt_state": abstract_state(tx, params, state_shardings)}
    saved = {name: jax.ShapeDtypeStruct(tuple(array["shape"]), jnp.dtype(array["dtype"]))
             for name, array in manifest["arrays"].items()}
    _check_layout(saved, target, "the checkpoint", "the optimizer restored into", advice)
    _check_identity(manifest["optimizer"], _identity(target["opt_state"], "opt_state"), where, advice)
    wanted = _by_name(target)
    for name, array in saved.items():
        if array.dtype != wanted[name].dtype and not cast:
            raise ValueError(f"{where} holds {name} as {array.dtype}, but the one restored into is"
                             f" {wanted[name].dtype}: pass cast=True to convert it")
    as_saved = jax.tree.unflatten(jax.tree.structure(target), [  # cast after the checksums, on request only
        jax.ShapeDtypeStruct(t.shape, saved[name].dtype, sharding=t.sharding) for name, t in wanted.items()])
    with contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        try:
            restored = checkpointer.restore(path, as_saved)
        except Exception as error:  # tensorstore's and orbax's many kinds
            raise ValueError(f"{where} could not be read ({type(error).__name__}: {error}); it is damaged") from error
    for name, checksum in checksums(restored).items():
        if checksum != manifest["arrays"][name]["checksum"]:
            raise ValueError(f"{where}: {name} does not match the checksum saved with it; the file holding it is"
                             " corrupt (restore an earlier checkpoint)")
    if cast:
        restored = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), restored, target)
    return restored["params"], restored["opt_state"]


def _check_identity(saved: dict, wanted: dict, where: str, advice: str) -> None:
    for path, kind in wanted["types"].items():
        if saved["types"].get(path, kind) != kind:
            raise ValueError(f"{where} was written by another optimizer: its state at {path} is"
                             f" {saved['types'][path]}, the optimizer restored into has {kind} there: {advice}")
    for path, names in wanted["hyperparams"].items():
        if saved["hyperparams"].get(path, names) != names:
            raise ValueError(f"{where} was written by another optimizer: its hyperparameters at {path} are"
                             f" {saved['hyperparams'][path]}, the optimizer restored into has {names}: {advice}")
