"""The few markdown pieces the summary is made of."""
from pathlib import Path
from typing import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; numbers must already be formatted."""
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def image(path: Path, alt: str) -> str:
    """An image link relative to summary.md, which sits in the same folder."""
    return f"![{alt}]({Path(path).name})"
