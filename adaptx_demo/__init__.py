"""adaptx's demo: ``python -m adaptx demo`` (or ``python -m adaptx_demo``) writes PNG figures and summary.md.

A separate package from the library: it needs the ``demo`` extra (matplotlib,
scikit-learn; tqdm optional), which ``adaptx`` itself never imports.

The demo is a list of sections. A section is a function
``section(out_dir, progress, quick) -> str`` that writes its files into ``out_dir``,
runs its work as labelled phases of ``progress`` (:class:`adaptx_demo.progress.Progress`)
advancing it by its declared ``work`` in all, and returns its part of summary.md,
starting with a ``##`` heading; ``quick`` asks for a CI-sized run. Add one by
appending a :class:`Section` to :data:`SECTIONS`.

``adaptx_demo.digits`` (the digits data and MLP) needs only scikit-learn, so this
package's ``__init__`` imports nothing heavy: ``run``, ``Section`` and ``SECTIONS``
load :mod:`adaptx_demo.runner` (and matplotlib) on first use.
"""

_RUNNER_NAMES = ("run", "Section", "SECTIONS")


def __getattr__(name):
    if name in _RUNNER_NAMES:
        from adaptx_demo import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'adaptx_demo' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_RUNNER_NAMES])
