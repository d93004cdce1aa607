"""Command line: ``python -m adaptx demo [--out DIR] [--quick]``.

The demo lives in the separate package ``adaptx_demo`` (installed alongside adaptx,
usable with the ``demo`` extra); this module only dispatches to it, so that the
library never imports matplotlib or scikit-learn.
"""
import argparse
import importlib
import sys

INSTALL = 'pip install "adaptx[demo]"'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptx", description="adaptx command line")
    commands = parser.add_subparsers(dest="command", required=True)
    # The demo's own options (and its --help) are parsed by adaptx_demo.cli.
    commands.add_parser("demo", add_help=False, help="run the demo: PNG figures and summary.md (python -m adaptx demo --help)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        try:
            from adaptx_demo import cli
            if not {"-h", "--help"} & set(rest):
                # Imports matplotlib and checks for scikit-learn: a missing extra fails here, in one line.
                importlib.import_module("adaptx_demo.runner")
        except ImportError as error:
            if (error.name or "").split(".")[0] == "adaptx_demo":
                error = f"the adaptx demo (package adaptx_demo) is not installed; install it with:  {INSTALL}"
            parser.exit(1, f"error: {error}\n")
        return cli.main(rest)
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
