"""Hyperparameter sweeps as one vmapped, jitted program: no optimizer rebuilt per setting."""
import functools
import itertools
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from adaptx.base import GradientTransformation, apply_updates
from adaptx.hyperparams import hyperparams, set_hyperparams
from adaptx.sweep_result import SweepResult

Settings = Union[Sequence[Mapping[str, Any]], Mapping[str, Sequence[Any]]]

# Aim for about this many progress-bar updates: each is one dispatch of a jitted scan.
_PROGRESS_UPDATES = 20


def grid(**axes: Sequence[Any]) -> list:
    """Every combination of the given values, the last name varying fastest.

        >>> grid(learning_rate=[0.1, 0.01], b1=[0.9, 0.95])
        [{'learning_rate': 0.1, 'b1': 0.9}, {'learning_rate': 0.1, 'b1': 0.95},
         {'learning_rate': 0.01, 'b1': 0.9}, {'learning_rate': 0.01, 'b1': 0.95}]
    """
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def _whole(data, step):
    return data


def sweep(
    loss_fn: Callable[[Any, Any], jax.Array],
    tx: GradientTransformation,
    params: Any,
    data: Any,
    settings: Settings,
    *,
    steps: int,
    batch_fn: Optional[Callable[[Any, jax.Array], Any]] = None,
    chunk_size: Optional[int] = None,
    scan_steps: Optional[int] = None,
    progress: bool = True,
) -> SweepResult:
    """Train from ``params`` with ``tx`` under every hyperparameter setting at once.

    Each step is ``loss, g = value_and_grad(loss_fn)(params, batch_fn(data, t))``
    followed by ``tx.update`` and :func:`adaptx.apply_updates`. All settings
    run together under ``jax.vmap`` in one jitted ``lax.scan``: each gets its
    own copy of the optimizer state with :func:`adaptx.set_hyperparams`
    applied, so ``tx`` is built once and compiled once. ``tx`` is any adaptx
    optimizer, or a chain holding exactly one (the swept names are its
    argument names). Every setting starts from ``params`` and sees the same
    batches.

    Args:
      loss_fn: ``(params, batch) -> scalar loss``.
      tx: the optimizer; settings override its hyperparameters.
      params: the starting parameters, shared by every setting.
      data: a pytree of arrays handed to ``batch_fn`` (or, without one, to
        ``loss_fn`` as the batch of every step).
      settings: a list of dicts ``{name: value}``, or a dict of lists whose
        product is swept (see :func:`grid`). A name a setting leaves out keeps
        ``tx``'s value.
      steps: training steps per setting.
      batch_fn: ``(data, step) -> batch``, traced inside jit, to draw a
        minibatch for step ``step`` (e.g. with ``jax.random.fold_in``).
      chunk_size: run at most this many settings at a time, to bound memory
        (each holds its own params and state); the last chunk is padded, so
        every chunk reuses one compiled program. Default: all at once.
      scan_steps: steps per jitted scan; the progress bar moves between
        scans. Default: a divisor of ``steps`` near ``steps / 20`` with
        ``progress``, else ``steps``.
      progress: show a tqdm bar over steps.

    Returns:
      A :class:`SweepResult`: ``losses`` (settings × steps), ``final_loss``,
      the final ``params`` stacked on a leading settings axis, and a table
      (``rows()``, ``to_markdown()``, ``best()``).

    Example::

        def loss_fn(params, batch):
            x, y = batch
            return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

        result = adaptx.sweep(
            loss_fn, adaptx.adam(), params, (x, y),
            adaptx.grid(learning_rate=[1e-3, 1e-2, 1e-1], b1=[0.8, 0.9]),
            steps=500,
        )
        print(result.to_markdown(sort=True))
        result.final_loss.reshape(3, 2)     # learning rate × b1
    """
    settings = _as_list(settings)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    chunk_size = min(chunk_size or len(settings), len(settings))
    lengths = _scan_lengths(steps, scan_steps or (_default_scan_steps(steps) if progress else steps))
    run = functools.partial(
        _train_chunk, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn or _whole
    )

    base = tx.init(params)
    chunks = [settings[i:i + chunk_size] for i in range(0, len(settings), chunk_size)]
    losses, finals, finished = [], [], []
    with tqdm(total=steps * len(chunks), unit="step", disable=not progress, desc="sweep") as bar:
        for k, chunk in enumerate(chunks):
            bar.set_postfix_str(f"settings {k * chunk_size + 1}-{k * chunk_size + len(chunk)} of {len(settings)}")
            padded = chunk + chunk[-1:] * (chunk_size - len(chunk))
            chunk_params, state = _replicas(params, [set_hyperparams(base, **s) for s in padded])
            curves, start = [], 0
            for length in lengths:
                chunk_params, state, curve, final = run(chunk_params, state, data, start, length=length)
                curves.append(np.asarray(curve))  # waits for the scan, so the bar is honest
                start += length
                bar.update(length)
            keep = slice(0, len(chunk))
            losses.append(np.concatenate(curves, axis=1)[keep])
            finals.append(np.asarray(final)[keep])
            finished.append(jax.tree.map(lambda p: np.asarray(p)[keep], chunk_params))

    return SweepResult(
        settings=settings,
        hyperparams=_swept_values(base, settings),
        losses=np.concatenate(losses),
        final_loss=np.concatenate(finals),
        params=jax.tree.map(lambda *ps: np.concatenate(ps), *finished),
    )


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "tx", "batch_fn", "length"), donate_argnames=("params", "state")
)
def _train_chunk(params, state, data, start, *, loss_fn, tx, batch_fn, length):
    """``length`` steps of every setting: params and state carry a leading settings axis."""
    def train(params, state):
        def step(carry, t):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch_fn(data, t))
            updates, state = tx.update(grads, state, params)
            return (apply_updates(params, updates), state), loss

        ts = start + jnp.arange(length, dtype=jnp.int32)
        (params, state), losses = jax.lax.scan(step, (params, state), ts)
        return params, state, losses, loss_fn(params, batch_fn(data, start + length))

    return jax.vmap(train)(params, state)


def _as_list(settings: Settings) -> list:
    if isinstance(settings, Mapping):
        settings = grid(**settings)
    settings = [dict(s) for s in settings]
    if not settings:
        raise ValueError("settings is empty: give at least one {name: value} dict")
    return settings


def _default_scan_steps(steps: int) -> int:
    """The smallest divisor of ``steps`` that is at least steps / 20, so one program serves every scan.

    When that divisor is large (``steps`` prime, say), settle for steps / 20
    and one shorter final scan, compiled separately.
    """
    target = math.ceil(steps / _PROGRESS_UPDATES)
    divisor = next(d for d in range(target, steps + 1) if steps % d == 0)
    return divisor if divisor <= 2 * target else target


def _scan_lengths(steps: int, scan_steps: int) -> list:
    if scan_steps < 1:
        raise ValueError(f"scan_steps must be a positive integer, got {scan_steps}")
    full, rest = divmod(steps, scan_steps)
    return [scan_steps] * full + ([rest] if rest else [])


@jax.jit
def _replicas(params, states: list):
    """One copy of ``params`` per state, and the states stacked: the settings axis vmap maps over."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (len(states), *jnp.shape(p))), params), stacked


def _swept_values(base, settings: list) -> list:
    """Each setting's value of every swept name, filling gaps with ``tx``'s own."""
    names = list(dict.fromkeys(name for s in settings for name in s))
    defaults = {name: np.asarray(v).tolist() for name, v in hyperparams(base).items() if name in names}
    return [{name: s.get(name, defaults.get(name)) for name in names} for s in settings]
