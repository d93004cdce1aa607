"""The demo command, the examples and the README's code: they run and say what they promise."""
import contextlib
import io
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from adaptx.__main__ import main
from harness import rounding_bound, step_cost

ROOT = Path(__file__).resolve().parents[1]
FIGURES = [
    "adagrad_vs_rmsprop.png", "paths_quadratic.png", "paths_rosenbrock.png", "losses.png",
    "digits_curves.png", "digits_effective_lr.png", "digits_lr_sweep.png",
]

# Seed 003's printout: x, y after each step and the loss before it.
SEED_003 = """
Epoch 1: x = 4.0000, y = 4.0000, loss = 275.0000 Epoch 2: x = 3.3734, y = 3.3734, loss = 176.0000
Epoch 3: x = 2.9043, y = 2.9043, loss = 125.1775 Epoch 4: x = 2.5283, y = 2.5283, loss = 92.7866
Epoch 5: x = 2.2157, y = 2.2157, loss = 70.3128 Epoch 6: x = 1.9503, y = 1.9503, loss = 54.0031
Epoch 7: x = 1.7217, y = 1.7217, loss = 41.8402 Epoch 8: x = 1.5230, y = 1.5230, loss = 32.6073
Epoch 9: x = 1.3489, y = 1.3489, loss = 25.5132 Epoch 10: x = 1.1959, y = 1.1959, loss = 20.0162
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole demo, run once through the command line (CI-sized) into a fresh folder."""
    out = tmp_path_factory.mktemp("demo") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), "--no-progress", "--quick"]) == 0
    return out, printed.getvalue()


def _table_rows(markdown: str) -> list:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if re.match(r"\|\s*\d+\s*\|", line)
    ]


def test_demo_writes_every_promised_file(demo):
    out, _ = demo
    for name in [*FIGURES, "summary.md", "rmsprop_table.md"]:
        assert (out / name).is_file(), name
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name


def test_summary_embeds_the_figures_and_every_section(demo):
    out, _ = demo
    summary = (out / "summary.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary)
    assert sorted(embedded) == sorted(FIGURES)
    assert len(re.findall(r"^## ", summary, re.M)) == 4
    for optimizer in ["sgd", "sgd+momentum", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adamax", "nadam"]:
        assert re.search(rf"^\| {re.escape(optimizer)} \|", summary, re.M), optimizer


def test_rmsprop_table_matches_seed_003(demo):
    out, printed = demo
    expected = [list(row) for row in re.findall(r"Epoch (\d+): x = ([\d.]+), y = ([\d.]+), loss = ([\d.]+)", SEED_003)]
    assert len(expected) == 10
    saved = (out / "rmsprop_table.md").read_text()
    rows = _table_rows(saved)
    assert [row[0] for row in rows] == [row[0] for row in expected]
    # Both are rounded to 4 decimals (±0.5e-4 each) from values float32 puts within 10 steps'
    # rounding_bound of the exact ones (test_seeds: the strings need not be equal).
    ours, seed = (np.array([[float(v) for v in row[1:]] for row in table]) for table in (rows, expected))
    slack = 1e-4 * (1 + 1e-9) + rounding_bound(10, step_cost("rmsprop")[0] + 5) * np.max(np.abs(seed), axis=0)
    assert np.all(np.abs(ours - seed) <= slack), (np.abs(ours - seed), slack)
    assert saved.strip() in printed
    summary = (out / "summary.md").read_text()
    assert saved.strip() in summary
    verdict = ("Every entry equals the seed's printout to 4 decimals." if rows == expected
               else "The seed's printout differs by up to")
    assert verdict in summary


def test_adagrad_effective_learning_rate_shrinks_and_rmsprops_grows_back():
    from adaptx_demo import adagrad_vs_rmsprop

    (adagrad_path, adagrad), (rmsprop_path, rmsprop) = adagrad_vs_rmsprop.runs().values()
    assert adagrad_path.dtype == np.float64 and len(adagrad_path) == len(rmsprop_path) == 51
    assert np.all(np.diff(adagrad) <= 0) and adagrad[-1] < adagrad[0]
    assert rmsprop[-1] > 10 * rmsprop[0]


def test_sections_are_pluggable(tmp_path):
    import adaptx_demo as demo

    def extra(out_dir, progress, quick):
        (out_dir / "extra.txt").write_text("written")
        progress.update(2)
        return "## Extra\n\nA section added from outside."

    summary = demo.run(tmp_path, sections=[demo.Section(extra, work=2)], progress_bar=False)
    assert summary == tmp_path / "summary.md"
    assert (tmp_path / "extra.txt").read_text() == "written"
    assert summary.read_text().startswith("# adaptx demo")
    assert "## Extra\n\nA section added from outside." in summary.read_text()


def test_missing_demo_extras_tell_the_user_what_to_install(monkeypatch, capsys):
    for name in list(sys.modules):
        if name.split(".")[0] == "adaptx_demo":
            monkeypatch.delitem(sys.modules, name)
    for name in [*(n for n in sys.modules if n.split(".")[0] == "matplotlib"), "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", "unused"])
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert 'pip install "adaptx[demo]"' in error and "matplotlib" in error


def test_examples_run(capsys):
    runpy.run_path(str(ROOT / "examples" / "train_step.py"), run_name="__main__")
    loss = float(re.search(r"loss ([\d.e+-]+)", capsys.readouterr().out).group(1))
    assert loss < 1e-6
    runpy.run_path(str(ROOT / "examples" / "vmap_sweep.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("learning rate") == 10 and "best learning rate" in out


def test_readme_python_blocks_run_in_order():
    readme = (ROOT / "README.md").read_text()
    # The first two blocks (a training step, a sweep) are whole programs; later ones are fragments.
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)[:2]
    assert "def train" in blocks[1] or "vmap" in blocks[1]
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert float(namespace["value"]) < 1e-6
    assert namespace["losses"].shape == (9, 200)


def test_digits_section_reports_every_optimizer_learning(demo):
    from adaptx_demo import digits_report

    out, _ = demo
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(digits_report.OPTIMIZERS)
    # Every optimizer learns the digits far beyond chance (10 %) at its best learning rate.
    assert all(float(row.split(" | ")[4].rstrip("%")) > 80 for row in rows)
