"""Hyperparameter sweeps as one vmapped, jitted program: no optimizer rebuilt per setting."""
import functools
import itertools
import math
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptx._src.base import GradientTransformation, apply_updates
from adaptx._src.hyperparams import hyperparams, set_hyperparams
from adaptx._src.sweep_result import SweepResult

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
    record: Optional[Callable[[Any, Any], Any]] = None,
    record_every: int = 1,
    chunk_size: Optional[int] = None,
    scan_steps: Optional[int] = None,
    progress: Union[bool, str] = True,
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
      record: ``(params, opt_state) -> pytree``, traced inside jit and kept
        every ``record_every`` steps: test accuracy, or
        :func:`adaptx.monitor_stats` of a monitored ``tx``.
      record_every: steps between records; must divide ``steps``.
      chunk_size: run at most this many settings at a time, to bound memory
        (each holds its own params and state); the last chunk is padded, so
        every chunk reuses one compiled program. Default: all at once.
      scan_steps: steps per jitted scan, a multiple of ``record_every``; the
        progress bar moves between scans. Default: a divisor of ``steps``
        near ``steps / 20`` with ``progress``, else ``steps``.
      progress: show a tqdm bar over steps (labelled with the string, if one).

    Returns:
      A :class:`SweepResult`: ``losses`` (settings × steps), ``final_loss``,
      the final ``params`` and the ``records`` with a leading settings axis,
      and a table (``rows()``, ``to_markdown()``, ``best()``).

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
    optional = {"chunk_size": chunk_size, "scan_steps": scan_steps}
    _check_positive(steps=steps, record_every=record_every, **{k: v for k, v in optional.items() if v is not None})
    for name, value in (("steps", steps), ("scan_steps", scan_steps or record_every)):
        if value % record_every:
            raise ValueError(f"{name}={value} must be a multiple of record_every={record_every}")
    blocks = steps // record_every
    per_scan = (scan_steps or 0) // record_every or (_default_scan_steps(blocks) if progress else blocks)
    lengths = _scan_lengths(blocks, per_scan)
    chunk_size = min(chunk_size or len(settings), len(settings))
    run = functools.partial(
        _train_chunk, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn or _whole, record=record,
        record_every=record_every,
    )

    base = tx.init(params)
    outcomes = []
    label = progress if isinstance(progress, str) else "sweep"
    total = steps * math.ceil(len(settings) / chunk_size)
    with _progress_bar(total, label, enabled=bool(progress)) as bar:
        for first in range(0, len(settings), chunk_size):
            chunk = settings[first:first + chunk_size]
            bar.set_postfix_str(f"settings {first + 1}-{first + len(chunk)} of {len(settings)}")
            # Padding the last chunk keeps its shapes, so it reuses the compiled program.
            padded = chunk + chunk[-1:] * (chunk_size - len(chunk))
            replicas = _replicas(params, [set_hyperparams(base, **s) for s in padded])
            outcome = _train_settings(run, *replicas, data, lengths, record_every, bar)
            outcomes.append(jax.tree.map(lambda x: x[:len(chunk)], outcome))

    losses, records, final, params = _concatenate(outcomes, axis=0)
    return SweepResult(
        settings=settings,
        hyperparams=_swept_values(base, settings),
        losses=losses,
        final_loss=final,
        params=params,
        records=records if record is not None else None,
        record_steps=np.arange(1, blocks + 1) * record_every,
    )


def _train_settings(run, params, state, data, lengths: list, record_every: int, bar) -> tuple:
    """Every scan of one chunk of settings: (losses, records, final loss, final params) on the host."""
    scans, start = [], 0
    for length in lengths:
        params, state, losses, records, final = run(params, state, data, start, length=length)
        # Fetching waits for the scan, so the bar moves with the computation.
        scans.append(jax.device_get((losses, records)))
        start += length * record_every
        bar.update(length * record_every)
    losses, records = _concatenate(scans, axis=1)
    return losses, records, jax.device_get(final), jax.device_get(params)


@functools.partial(
    jax.jit,
    static_argnames=("loss_fn", "tx", "batch_fn", "record", "record_every", "length"),
    donate_argnames=("params", "state"),
)
def _train_chunk(params, state, data, start, *, loss_fn, tx, batch_fn, record, record_every, length):
    """``length × record_every`` steps of every setting; params and state have a leading settings axis."""
    def step(carry, t):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch_fn(data, t))
        updates, state = tx.update(grads, state, params)
        return (apply_updates(params, updates), state), loss

    def block(carry, t):
        carry, losses = jax.lax.scan(step, carry, t + jnp.arange(record_every, dtype=jnp.int32))
        return carry, (losses, () if record is None else record(*carry))

    def train(params, state):
        firsts = start + record_every * jnp.arange(length, dtype=jnp.int32)
        (params, state), (losses, records) = jax.lax.scan(block, (params, state), firsts)
        end = start + length * record_every
        return params, state, losses.reshape(-1), records, loss_fn(params, batch_fn(data, end))

    return jax.vmap(train)(params, state)


class _NoBar:
    """The part of tqdm's bar that :func:`sweep` uses, doing nothing (progress off)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        pass


class _LineBar(_NoBar):
    """Progress without tqdm: a line per chunk of settings and one at the end, on stderr."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0

    def update(self, n=1):
        self.done += n
        if self.done == self.total:
            print(f"{self.label}: {self.done}/{self.total} steps", file=sys.stderr, flush=True)

    def set_postfix_str(self, text):
        print(f"{self.label}: {self.done}/{self.total} steps, {text}", file=sys.stderr, flush=True)


def _progress_bar(total: int, label: str, enabled: bool):
    """tqdm's bar when progress is asked for and tqdm is installed, plain lines when it is not.

    tqdm is imported here, not at module level, so that it stays an optional dependency.
    """
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineBar(total, label)
    return tqdm(total=total, unit="step", desc=label)


def _check_positive(**values):
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def _concatenate(trees: list, axis: int):
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis), *trees)


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
    full, rest = divmod(steps, scan_steps)
    return [scan_steps] * full + ([rest] if rest else [])


def _replicas(params, states: list):
    """One copy of ``params`` per state, and the states stacked: the settings axis vmap maps over.

    Leaves a setting left alone are the same object in every state and are
    broadcast on the device; the swept hyperparameters (scalars) are stacked
    on the host. Neither compiles a program per optimizer.
    """
    def stack(*leaves):
        if all(leaf is leaves[0] for leaf in leaves):
            return jnp.broadcast_to(leaves[0], (len(leaves), *jnp.shape(leaves[0])))
        return jnp.asarray(np.stack([np.asarray(leaf) for leaf in leaves]))

    copies = jax.tree.map(lambda p: stack(*[p] * len(states)), params)
    return copies, jax.tree.map(stack, *states)


def _swept_values(base, settings: list) -> list:
    """Each setting's value of every swept name, filling gaps with ``tx``'s own."""
    names = list(dict.fromkeys(name for s in settings for name in s))
    defaults = {name: np.asarray(v).tolist() for name, v in hyperparams(base).items() if name in names}
    return [{name: s.get(name, defaults.get(name)) for name in names} for s in settings]
