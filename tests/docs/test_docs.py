"""The README and every docs page as a user meets them: snippets run, links resolve, the site builds.

Each page's ```python blocks run in order as one script in a fresh interpreter, in an
empty folder, with no XLA_FLAGS (a page that needs simulated devices must set them, as
a user pasting it would). A page that leaves files behind (checkpoints) runs a second
time in the same folder, because pasting a block twice must work too. Blocks meant
as output or shell are fenced as ```text or ```bash and are not run.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import adaptx
import adaptx.compat.keras
import adaptx.compat.torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SUBMODULES = {"checkpoint", "compat", "kernels", "sharding", "testing"}


def snippets(page: pathlib.Path) -> str:
    return "\n".join(PYTHON_BLOCK.findall(page.read_text()))


def run_script(source: str, cwd: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", source], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


RUNNABLE = [page for page in PAGES if snippets(page)]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_every_code_block_runs(page, tmp_path):
    run_script(snippets(page), tmp_path)
    if any(tmp_path.iterdir()):
        run_script(snippets(page), tmp_path)


def test_the_pages_that_should_hold_code_do():
    # A page's blocks could silently lose their ```python fence (and stop being run).
    assert {p.name for p in RUNNABLE} >= {
        "README.md", "hyperparameters.md", "diagnostics.md", "composing.md", "performance.md", "sharding.md",
        "checkpoints.md", "memory.md", "porting.md", "custom_blocks.md"}


def test_readme_links_resolve_and_it_stays_short():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"
    assert len(text.splitlines()) <= 150


def test_api_reference_lists_every_public_name():
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (\S+)$", page.read_text(), re.M))
    public = {f"adaptx.{name}" for name in adaptx.__all__ if name not in SUBMODULES}
    public |= {f"adaptx.{name}" for name in SUBMODULES - {"compat"}} | {"adaptx.compat.torch", "adaptx.compat.keras"}
    assert public - documented == set(), "add these to a page under docs/api/"
    assert documented - public == set(), "these are documented but not public"


def test_porting_page_names_every_preset():
    text = (ROOT / "docs" / "porting.md").read_text()
    torch_line, keras_line = re.search(r"Presets: (.*?) \(torch\) and (.*?) \(Keras\)", text, re.S).groups()
    listed = lambda line: set(re.sub(r"[`\s]", "", line).split(","))  # noqa: E731
    assert listed(torch_line) == set(adaptx.compat.torch.__all__)
    assert listed(keras_line) == set(adaptx.compat.keras.__all__)


def test_docs_site_builds_without_warnings(tmp_path):
    # mkdocs --strict turns every warning (a broken link, a docstring griffe cannot
    # parse, an API name that does not resolve) into a failure.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_every_repository_path_the_text_names_exists():
    # A docstring once pointed at a docs page that never existed.
    named = re.compile(r"\b((?:docs|tests|examples|benchmarks)/[\w/]+\.(?:md|py|json))")
    sources = [*PAGES, *ROOT.glob("adaptx/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py"),
               *ROOT.glob("tests/**/*.py")]
    missing = {(str(source.relative_to(ROOT)), path) for source in sources
               for path in named.findall(source.read_text()) if not (ROOT / path).exists()}
    assert not missing, sorted(missing)
