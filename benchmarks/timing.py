"""Interleaved wall-clock timing, the trace / lower / compile split of a jitted step, and where results go."""
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

RECORDS = Path(__file__).resolve().parent  # benchmarks/: the committed figures


def interleaved(runs: Dict[str, Callable[[], None]], reps: int) -> Dict[str, List[float]]:
    """Seconds per call of each run, calling them in turn ``reps`` times after one warm-up each.

    Taking turns means a burst of load from other processes lands on every
    contender, not on whichever happened to be running then; each turn starts
    one contender later than the last, so that none always runs right after
    the same neighbour (the first after a big allocation runs measurably faster).
    ``times[name][k]`` is from turn k for every name.
    """
    for run in runs.values():
        run()
    names = list(runs)
    times = {name: [] for name in names}
    for turn in range(reps):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds: List[float]) -> float:
    return statistics.median(seconds) * 1e3


def compile_phases(jitted, *args) -> Dict[str, object]:
    """Trace, lower and compile ``jitted`` for ``args``, timing each phase; returns the executable too."""
    start = time.perf_counter()
    traced = jitted.trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done_at = time.perf_counter()
    return {
        "trace_s": traced_at - start, "lower_s": lowered_at - traced_at, "compile_s": done_at - lowered_at,
        "compiled": compiled,
    }


def results_folder(out: Optional[Path], quick: bool, name: str) -> Path:
    """Where a run writes: ``out``, else a fresh scratch folder for ``--quick``, else benchmarks/.

    A smoke run never writes into benchmarks/: its figures would replace the recorded ones.
    """
    if out is None:
        out = Path(tempfile.mkdtemp(prefix=f"adaptx-{name}-")) if quick else RECORDS
    if quick and Path(out).resolve() == RECORDS:
        raise SystemExit("--quick never writes into benchmarks/ (its smoke figures would replace the recorded ones)")
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out)
