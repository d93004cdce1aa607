"""``python -m adaptx_demo [--out DIR] [--quick]``: the same as ``python -m adaptx demo``."""
import sys

from adaptx_demo.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m adaptx_demo"))
