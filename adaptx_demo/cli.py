"""The demo's command line, shared by ``python -m adaptx demo`` and ``python -m adaptx_demo``."""
import argparse
import time


def main(argv=None, prog: str = "python -m adaptx demo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Adagrad vs RMSProp, the RMSprop table, every optimizer's path on two 2-D problems,"
        " an MLP on scikit-learn's digits with effective learning rates and a learning-rate sweep, and"
        " 8-bit and 4-bit Adam and Adafactor on a character-level language model and the digits;"
        " PNG figures and summary.md go into --out.",
    )
    parser.add_argument("--out", default="adaptx-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="print no progress (bar or phase lines)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: the digits on 8 learning rates × 150 steps instead of 16 × 600")
    args = parser.parse_args(argv)

    from adaptx_demo import runner  # after parsing, so that --help needs no matplotlib

    started = time.perf_counter()
    summary = runner.run(args.out, progress_bar=not args.no_progress, quick=args.quick)
    print(f"wrote {summary.parent}/ ({summary.name} and the figures) in {time.perf_counter() - started:.1f} s")
    return 0
