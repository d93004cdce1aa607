"""One command for every benchmark: ``python -m benchmarks.run [--quick] [--only SUITES] [--out DIR]``.

Writes ``RESULTS.md`` and ``results.json`` into ``--out`` (default: this folder).
The recorded run uses the issue's sizes: 2^24 float32 params in one leaf and
1000 leaves of mixed sizes; ``--quick`` shrinks everything for a smoke test.
"""
import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import jax
import optax

import adaptx
from adaptx._src import kernels
from benchmarks import report, suites
from benchmarks.timing import results_folder

SUITES = ("single", "leaves", "bf16")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, jax device {jax.devices()[0]}"


def load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    ap.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for RESULTS.md and results.json (default: this folder; with --quick a temporary one)")
    ap.add_argument("--size-log2", type=int, default=None, help="params in the one-leaf runs (default 24, quick 14)")
    ap.add_argument("--leaves", type=int, default=None, help="leaves in the many-leaf run (default 1000, quick 20)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per run (default 21, quick 3)")
    ap.add_argument("--no-two-step-leaves", action="store_true",
                    help="skip compiling adaptx's two-step path on the many-leaf tree (the slowest compile)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SUITES)
    if unknown:
        ap.error(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    args.out = results_folder(args.out, args.quick, "bench")
    n = 1 << (args.size_log2 or (14 if args.quick else 24))
    leaves = args.leaves or (20 if args.quick else 1000)
    reps = args.reps or (3 if args.quick else 21)

    meta = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command="python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=machine(), load_start=load(), n=n, leaves=leaves, reps=reps,
        versions=f"jax {jax.__version__}, optax {optax.__version__}, adaptx {adaptx.__version__}"
                 f" (one-pass kernel {'built' if kernels.available() else 'unavailable: ' + str(kernels.unavailable_reason())})",
    )
    records = []
    if "single" in only:
        records += suites.single_leaf(n, reps)
    if "leaves" in only:
        records += suites.many_leaves(leaves, reps, two_step=not args.no_two_step_leaves)
    if "bf16" in only:
        records += suites.bf16_params(n, reps)
    meta["load_end"] = load()
    report.write(records, meta, args.out)
    print((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
