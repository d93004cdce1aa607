"""A real-data workload: scikit-learn's handwritten digits and a small MLP classifier.

The 1,797 8×8 images ship inside scikit-learn (no download). Used by the
digits demo section, ``examples/digits_mlp.py`` and the sweep benchmark.
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Split(NamedTuple):
    x_train: jax.Array  # (n_train, 64) pixels scaled to [0, 1]
    y_train: jax.Array  # (n_train,) int32 labels 0..9
    x_test: jax.Array
    y_test: jax.Array


def load(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """The digits, split into train and test sets stratified by label."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError("the digits data ship with scikit-learn: pip install 'adaptx[demo]'") from error
    images, labels = load_digits(return_X_y=True)
    parts = train_test_split(
        images.astype(np.float32) / 16.0, labels.astype(np.int32),
        test_size=test_fraction, random_state=seed, stratify=labels,
    )
    x_train, x_test, y_train, y_test = map(jnp.asarray, parts)
    return Split(x_train, y_train, x_test, y_test)


def init_mlp(sizes: Sequence[int] = (64, 64, 10), seed: int = 0) -> dict:
    """``{"layer1": {"w", "b"}, ...}`` with LeCun-normal weights and zero biases.

    Drawn with NumPy: a jax.random draw outside jit compiles a program per shape.
    """
    rng = np.random.default_rng(seed)
    return {
        f"layer{i + 1}": {
            "w": jnp.asarray(rng.standard_normal((n_in, n_out), np.float32) / np.sqrt(n_in)),
            "b": jnp.zeros(n_out),
        }
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
    }


def logits(params: dict, x: jax.Array) -> jax.Array:
    """tanh hidden layers, linear output."""
    depth = len(params)
    for i in range(1, depth):
        x = jnp.tanh(x @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"])
    return x @ params[f"layer{depth}"]["w"] + params[f"layer{depth}"]["b"]


def cross_entropy(params: dict, batch) -> jax.Array:
    """Mean softmax cross-entropy of ``batch = (x, labels)``."""
    x, y = batch
    log_probs = jax.nn.log_softmax(logits(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def accuracy(params: dict, batch) -> jax.Array:
    x, y = batch
    return jnp.mean(jnp.argmax(logits(params, x), axis=1) == y)


def batch_schedule(n_rows: int, steps: int, batch_size: int, seed: int = 0) -> jax.Array:
    """Row indices of each step's minibatch, (steps, batch_size): shuffled epochs, no repeats within one."""
    rng = np.random.default_rng(seed)
    per_epoch = n_rows // batch_size
    epochs = [rng.permutation(n_rows)[:per_epoch * batch_size] for _ in range(-(-steps // per_epoch))]
    return jnp.asarray(np.concatenate(epochs).reshape(-1, batch_size)[:steps], jnp.int32)


def minibatch(data, step: jax.Array):
    """A ``batch_fn`` for :func:`adaptx.sweep` over ``data = ((x, labels), schedule)``.

    The schedule is computed ahead (no random-number program inside the
    training step) and read cyclically, so step ``steps`` (the sweep's final
    loss) reuses the first batch.
    """
    (x, y), schedule = data
    rows = schedule[step % schedule.shape[0]]
    return x[rows], y[rows]
