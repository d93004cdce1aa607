"""Command line: ``python -m adaptx demo [--out DIR]``."""
import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptx", description="adaptx command line")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the seed experiments and write PNG figures and summary.md",
        description="Adagrad vs RMSProp, the RMSprop table, every optimizer's path on two 2-D problems,"
        " and an MLP on scikit-learn's digits with effective learning rates and a learning-rate sweep.",
    )
    demo.add_argument("--out", default="adaptx-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument("--quick", action="store_true", help="fewer training steps on the digits (CI-sized)")
    args = parser.parse_args(argv)

    try:
        from adaptx import demo as demo_module
    except ImportError as error:
        parser.exit(1, f"error: {error}\n")
    started = time.perf_counter()
    summary = demo_module.run(args.out, progress_bar=not args.no_progress, quick=args.quick)
    print(f"wrote {summary.parent}/ ({summary.name} and the figures) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
