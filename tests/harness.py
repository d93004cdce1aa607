"""Shared test inputs: random pytrees, gradient sequences, hyperparameter draws, the error measure."""
import jax
import numpy as np

import adaptx


def random_params(rng, dtype=np.float32):
    """A pytree (NumPy leaves) of mixed shapes and containers: a matrix, a scalar, a vector, empty leaves, nesting."""
    def leaf(*shape):
        return rng.normal(size=shape).astype(dtype)

    return {"w": leaf(3, 4), "scalar": leaf(), "nested": [leaf(0), (leaf(5), {"deep": leaf(2, 0)})]}


def gradient_sequence(params, steps, rng, dtype=np.float32):
    """``steps`` gradients per leaf, stacked on a leading axis (NumPy arrays).

    Each coordinate gets a fixed scale drawn log-uniformly over six decades
    (1e-4 to 1e2), an envelope shrinking from 2 to 1 (so the second moment falls
    and AMSGrad's maximum matters) and 20% exact zeros (sparse gradients,
    Adagrad's motivating case, and the √0 path of every block).
    """
    envelope = 1 + np.exp(-np.arange(steps) / 15)

    def leaf(p):
        shape = np.shape(p)
        scale = 10.0 ** rng.uniform(-4, 2, size=shape)
        noise = rng.normal(size=(steps, *shape)) * (rng.uniform(size=(steps, *shape)) > 0.2)
        return (envelope.reshape(-1, *[1] * len(shape)) * scale * noise).astype(dtype)

    return jax.tree.map(leaf, params)


def representable(x, dtype=np.float32):
    """``x`` rounded to ``dtype`` and back, so both sides of a comparison start from the same number."""
    return float(np.asarray(x, dtype))


def uniform(rng, low, high):
    return representable(rng.uniform(low, high))


def log_uniform(rng, low, high):
    return representable(np.exp(rng.uniform(np.log(low), np.log(high))))


def relative_error(actual, expected):
    """max|a − b| / max|b| over one leaf: 0 for an empty leaf, ∞ if b is all zero but a is not.

    Normalising by the leaf's largest entry (not entry by entry) is the
    float32 meaning of "agrees to 1e-6": an entry 1e6 times smaller than its
    neighbours is held to the absolute precision of the leaf.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    if expected.size == 0:
        return 0.0
    gap, size = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    if np.isnan(gap):
        return np.inf
    if size == 0:
        return 0.0 if gap == 0 else np.inf
    return gap / size


def leaves_with_paths(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat]


def trajectory(tx):
    """``run(state, params, grads, steps) -> (updates, seen)``: each step's updates and the params it saw.

    One jitted step serves every state (and so every hyperparameter value);
    a Python loop over it compiles in about half the time of a ``lax.scan``.
    """
    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return updates, state, adaptx.apply_updates(params, updates)

    def run(state, params, grads, steps):
        all_updates, seen = [], []
        for t in range(steps):
            seen.append(params)
            updates, state, params = step(jax.tree.map(lambda g: g[t], grads), state, params)
            all_updates.append(updates)
        return jax.device_get(all_updates), jax.device_get(seen)

    return run


def worst_error(updates, seen, grads, reference):
    """Step ``reference`` on the gradients and params adaptx saw; the worst leaf's error, the step and leaf.

    Each leaf is measured over its whole run (steps × its shape): float32 is
    accurate relative to the size of the numbers it adds, and a momentum
    buffer that sums ± gradients to near zero at one step has no accurate
    float32 digits of its own at that step, in any implementation.
    """
    names, _ = leaves_with_paths(updates[0])
    grads = jax.tree.leaves(grads)
    expected = [reference([g[t] for g in grads], jax.tree.leaves(p)) for t, p in enumerate(seen)]
    worst = (0.0, None, None)
    for i, name in enumerate(names):
        actual = np.stack([jax.tree.leaves(u)[i] for u in updates])
        want = np.stack([step[i] for step in expected])
        error = relative_error(actual, want)
        if error > worst[0]:
            gap = np.abs(actual.astype(np.float64) - want).reshape(len(seen), -1).max(axis=1)
            worst = (error, int(np.argmax(gap)) + 1, name)
    return worst
