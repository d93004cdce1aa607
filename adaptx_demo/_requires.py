"""Fail at once, in one line with the install command, when an extra the demo needs is missing.

Checked with ``importlib.util.find_spec`` rather than by importing: matplotlib takes
a second to import, and the demo imports it only when it first plots, while its
programs are already compiling in the background.
"""
import importlib.util

INSTALL = 'pip install "adaptx[demo]"'
REQUIRED = {"matplotlib": "matplotlib", "sklearn": "scikit-learn"}  # module -> package


def missing_message(module: str, package: str) -> str:
    return (f"the adaptx demo needs matplotlib and scikit-learn, and {package} is not installed;"
            f" install them with:  {INSTALL}")


def check() -> None:
    """Raise ImportError naming the first missing extra (tqdm is optional and not checked)."""
    for module, package in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed installation
            found = False
        if not found:
            raise ImportError(missing_message(module, package), name=module)
