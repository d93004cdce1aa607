"""Shared machinery of the parity tests: random pytrees and gradients, one compiled scan per
optimizer structure, and the deviation measure the tolerances refer to."""
import collections

import jax
import numpy as np

import adaptx
from harness import relative_error

STEPS = 200

# Several ranks, a scalar and an empty leaf, in nested containers.
# Few leaves because each one adds to every compilation.
SHAPES = {"kernel": (4, 6), "bias": [(5,), ()], "empty": (0,)}


def random_params(rng: np.random.Generator) -> dict:
    return jax.tree.map(lambda shape: rng.standard_normal(shape).astype(np.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def random_grads(rng: np.random.Generator, params, steps: int = STEPS) -> dict:
    """``steps`` gradients per leaf, of random sign and magnitude log-uniform in [1e-6, 1e3]."""
    def draw(p):
        shape = (steps, *np.shape(p))
        return (rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-6, 3, shape)).astype(np.float32)

    return jax.tree.map(draw, params)


def log_uniform(low: float, high: float):
    return lambda rng: float(10.0 ** rng.uniform(np.log10(low), np.log10(high)))


def uniform(low: float, high: float):
    return lambda rng: float(rng.uniform(low, high))


# How many times each key's scan was traced: the hyperparameters are state, so once.
TRACES = collections.Counter()
_COMPILED = {}


def trajectory(key, tx: adaptx.GradientTransformation, params, grads, loss=None):
    """Params and optimizer state after one update per row of ``grads`` (or of ``loss``'s gradient).

    One jitted ``lax.scan`` per ``key``: optimizers built with the same
    structural options but other numbers reuse it, because their numbers
    travel in the state. ``loss``, when given, replaces ``grads`` by
    ``jax.grad(loss)`` at the current params; ``grads`` then only sets the step count.
    """
    if key not in _COMPILED:
        def run(state, params, grads):
            TRACES[key] += 1

            def step(carry, g):
                p, s = carry
                if loss is not None:
                    g = jax.grad(loss)(p)
                u, s = tx.update(g, s, p)
                return (adaptx.apply_updates(p, u), s), None

            return jax.lax.scan(step, (params, state), grads)[0]

        _COMPILED[key] = jax.jit(run)
    return _COMPILED[key](tx.init(params), params, grads)


def relative_deviation(got, want) -> float:
    """max over leaves of harness.relative_error: each leaf's max|got − want| / max|want|.

    Per leaf rather than per element: a coordinate that a long path of large
    updates brought near 0 carries rounding error of the size of those
    updates, so its own relative error says nothing about the optimizer.
    """
    return max((relative_error(g, w) for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)),
               default=0.0)


def identical(got, want) -> bool:
    return all(np.array_equal(np.asarray(g), np.asarray(w))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
