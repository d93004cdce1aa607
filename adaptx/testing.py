"""Check a gradient transformation, your own or adaptx's, for the properties every one should have.

    adaptx.testing.check_transformation(my_block(), params)

raises AssertionError naming the property and the leaf that breaks it. The
same function drives adaptx's own property tests over random pytrees.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaptx._src.validate import path_name
from adaptx._src.base import GradientTransformation


def random_like(tree: Any, seed: int = 0) -> Any:
    """Standard-normal arrays shaped and typed like the leaves of ``tree`` (reproducible from ``seed``)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), jnp.result_type(x)), tree)


def check_transformation(
    tx: GradientTransformation,
    params: Any,
    grads: Optional[Any] = None,
    *,
    steps: int = 2,
    ulps: float = 16,
) -> tuple[Any, Any]:
    """Run ``steps`` updates of ``tx`` eagerly and under jit and assert that:

    * **tree**: the updates have the gradients' tree (``None`` leaves included), shapes and dtypes;
    * **state**: every update returns a state with the same tree, shapes and dtypes
      (and weak types) as it was given, so it can be carried through ``jax.lax.scan``
      or a jitted loop without retracing;
    * **finite**: finite params and gradients give finite updates and state;
    * **jit**: ``jax.jit`` of ``init`` and ``update`` agree with eager execution to
      ``ulps`` units in the last place of each leaf's dtype (relative to the leaf's
      largest magnitude), the rounding that fusion may change;
    * **pure**: ``update`` changes neither its inputs' containers nor their arrays
      (checked on NumPy copies of grads and params, which an in-place write would change).

    ``grads`` defaults to :func:`random_like` ``(params)``. Returns the eager
    run's last ``(updates, state)``.
    """
    grads = random_like(params) if grads is None else grads
    _assert_all_finite("params", params)
    _assert_all_finite("grads", grads)
    state = tx.init(params)
    _assert_close("init", jax.jit(tx.init)(params), state, ulps)
    _assert_pure(tx, grads, state, params)
    jit_state, jit_update = state, jax.jit(tx.update)
    for step in range(1, steps + 1):
        updates, new_state = tx.update(grads, state, params)
        _assert_same_avals(f"step {step}: updates vs grads", updates, grads, weak_types=False)
        _assert_same_avals(f"step {step}: state after vs before update", new_state, state, weak_types=True)
        _assert_all_finite(f"step {step}: updates", updates)
        _assert_all_finite(f"step {step}: state", new_state)
        jit_updates, jit_state = jit_update(grads, jit_state, params)
        _assert_close(f"step {step}: jitted updates", jit_updates, updates, ulps)
        _assert_close(f"step {step}: jitted state", jit_state, new_state, ulps)
        state = new_state
    return updates, state


def _fail(prop: str, where: str, detail: str):
    raise AssertionError(f"check_transformation: {prop} fails at {where}: {detail}")


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _assert_pure(tx, grads, state, params):
    """Call ``tx.update`` on NumPy copies of grads and params and assert it left its inputs as they were."""
    inputs = (jax.tree.map(np.array, (grads, params)), state)
    structure, leaves = jax.tree.structure(inputs), jax.tree.leaves(inputs)
    values = jax.tree.map(np.copy, inputs[0])
    tx.update(inputs[0][0], state, inputs[0][1])
    if jax.tree.structure(inputs) != structure or any(a is not b for a, b in zip(jax.tree.leaves(inputs), leaves)):
        _fail("pure", "update", "it changed the containers of its grads, state or params"
              " (assigned into a dict or list it was given)")
    for (path, now), then in zip(_leaves(inputs[0]), jax.tree.leaves(values)):
        if not np.array_equal(now, then, equal_nan=True):
            _fail("pure", f"(grads, params){path_name(path)}", "update wrote into its input array")


def _aval(leaf) -> tuple:
    return np.shape(leaf), jnp.result_type(leaf), bool(getattr(leaf, "weak_type", False))


def _assert_same_avals(what: str, got, want, weak_types: bool):
    if jax.tree.structure(got) != jax.tree.structure(want):
        _fail("tree", what, f"{jax.tree.structure(got)} is not {jax.tree.structure(want)}")
    for (path, a), b in zip(_leaves(got), jax.tree.leaves(want)):
        got_aval, want_aval = _aval(a), _aval(b)
        if not weak_types:
            got_aval, want_aval = got_aval[:2], want_aval[:2]
        if got_aval != want_aval:
            _fail("state" if weak_types else "tree", f"{what}, {path_name(path)}",
                  f"(shape, dtype{', weak type' if weak_types else ''}) {got_aval} is not {want_aval}")


def _assert_all_finite(what: str, tree):
    for path, leaf in _leaves(tree):
        array = np.asarray(leaf)
        if _is_float(array.dtype) and not np.all(np.isfinite(array.astype(np.float64))):
            _fail("finite", f"{what}{path_name(path)}", "holds NaN or Inf")


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def _assert_close(what: str, got, want, ulps: float):
    if jax.tree.structure(got) != jax.tree.structure(want):
        _fail("jit", what, f"tree {jax.tree.structure(got)} is not {jax.tree.structure(want)}")
    for (path, a), b in zip(_leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype:
            _fail("jit", f"{what}{path_name(path)}", f"dtype {a.dtype} is not {b.dtype}")
        if not _is_float(a.dtype):
            if not np.array_equal(a, b):
                _fail("jit", f"{what}{path_name(path)}", f"{a} is not {b}")
            continue
        tolerance = ulps * float(jnp.finfo(a.dtype).eps)
        a, b = a.astype(np.float64), b.astype(np.float64)
        scale = max(np.max(np.abs(b), initial=0.0), np.finfo(np.float64).tiny)
        error = np.max(np.abs(a - b), initial=0.0) / scale
        if not error <= tolerance:
            _fail("jit", f"{what}{path_name(path)}",
                  f"differs from eager by {error:.3g} relative to its largest magnitude (allowed {tolerance:.3g})")
