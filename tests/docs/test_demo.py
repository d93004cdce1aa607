"""The demo command and the examples: they run and say what they promise (README and docs: test_docs.py)."""
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

ROOT = Path(__file__).resolve().parents[2]
# One worker runs this module, so the module-scoped demo run below happens once, not once per worker.
pytestmark = pytest.mark.xdist_group("demo")
FIGURES = [
    "adagrad_vs_rmsprop.png", "paths_quadratic.png", "paths_rosenbrock.png", "losses.png",
    "digits_curves.png", "digits_effective_lr.png", "digits_lr_sweep.png", "memory_curves.png",
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
    assert len(re.findall(r"^## ", summary, re.M)) == 5
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


def test_digits_section_reports_every_optimizer_learning(demo):
    from adaptx_demo import digits_report

    out, _ = demo
    summary = (out / "summary.md").read_text()
    section = summary.split("## Real data: handwritten digits")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(digits_report.optimizers(quick=True))
    # Every optimizer learns the digits far beyond chance (10 %) at its best learning rate.
    assert all(float(row.split(" | ")[4].rstrip("%")) > 80 for row in rows)


def test_quick_summary_times_every_labelled_phase(demo):
    out, _ = demo
    summary = (out / "summary.md").read_text()
    phases = re.findall(r"^\| ((?:Adagrad|RMSprop|paths|digits|memory)[^|]*?) \| ([\d.]+) \|$", summary, re.M)
    labels = [label for label, _ in phases]
    # Every figure has its own phase, and so has each section's computation.
    for name in FIGURES:
        assert any(name in label for label in labels), name
    assert any(label.startswith("digits: load data, compile and train") for label in labels)
    assert any(label.startswith("paths: compile and run") for label in labels)
    assert any(label.startswith("memory: train") for label in labels)


def test_memory_section_reports_state_bytes_and_quality(demo):
    """8-bit and 4-bit Adam keep about 2 and 1 bytes per parameter where float32 Adam keeps 8, and learn."""
    from adaptx_demo import memory_state

    out, _ = demo
    section = (out / "summary.md").read_text().split("## Memory-efficient state")[1].split("\n## ")[0]
    for task in memory_state.TASKS:
        table = section.split(f"**{task}**")[1].split("![")[0]
        rows = {cells[0]: cells[1:] for cells in
                ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| "))}
        assert list(rows)[2:] == list(memory_state.optimizers())  # after the header and its rule
        bytes_per_parameter = {name: float(rows[name][0]) for name in memory_state.optimizers()}
        assert bytes_per_parameter["Adam float32"] >= 8
        assert 2 <= bytes_per_parameter["Adam 8-bit"] < 2.5 and 1 <= bytes_per_parameter["Adam 4-bit"] < 1.5
        assert bytes_per_parameter["Adafactor η = 0.1"] < 0.2
        # 40 steps: everyone has left the initial loss far behind (cross-entropy over ≥ 10 classes ≥ 2.3 at the start)
        assert all(float(rows[name][1]) < 2.0 for name in ("Adam float32", "Adam 8-bit", "Adam 4-bit"))


def test_quick_summary_lists_the_runs_that_did_not_learn(demo):
    from adaptx_demo import verdicts

    out, _ = demo
    summary = (out / "summary.md").read_text()
    assert verdicts.DEFINITION in summary
    assert "| optimizer | η at chance level | η diverged |" in summary
    # SGD's largest learning rates send the MLP to chance level (the users' report): marked, not hidden.
    sgd = re.search(r"^\| sgd \| ([^|]+) \| ([^|]+) \|$", summary, re.M)
    assert sgd and sgd.group(1).strip() != "none"


def test_verdicts_on_a_synthetic_sweep():
    from adaptx_demo import verdicts

    nan = float("nan")
    train_losses = np.array([
        [2.3, 0.5, 0.1],  # learned
        [2.3, 0.4, 0.05],  # learned, the lowest final loss
        [2.3, nan, nan],  # diverged midway
        [2.3, 2.31, 2.302],  # stuck: chance-level accuracy
        [2.3, 9.0, 40.0],  # a huge final loss with finite numbers and 70 % accuracy: unstable, not chance
        [2.3, 0.01, 0.001],  # the lowest loss of all, but at chance-level accuracy (cannot be best)
    ])
    test_accuracy = np.array([0.9, 0.95, nan, 0.11, 0.7, 0.15])
    got = verdicts.classify(train_losses, test_accuracy)
    assert list(got) == ["learned", "learned", "diverged", "chance", "learned", "chance"]
    assert verdicts.best(train_losses[:, -1], got) == 1
    # Nothing learned: the best finite run; everything diverged: an error, not a silent pick.
    assert verdicts.best(np.array([nan, 2.4, 2.31]), np.array(["diverged", "chance", "chance"])) == 2
    with pytest.raises(ValueError, match="every run diverged"):
        verdicts.best(np.array([nan]), np.array(["diverged"]))


def test_heatmap_marks_diverged_and_chance_cells(monkeypatch, tmp_path):
    from adaptx_demo import digits_plots, digits_report, verdicts

    grid = np.array([1e-3, 1e-2, 1e-1, 1.0])
    nan = float("nan")

    def run(name, test_acc, train_loss):
        test_acc, train_loss = np.array(test_acc), np.array(train_loss)
        metrics = {
            "train_loss": np.stack([np.full(4, 2.3), train_loss], axis=1),
            "test_acc": np.stack([np.full(4, 0.1), test_acc], axis=1),
        }
        metrics["train_acc"], metrics["test_loss"] = metrics["test_acc"], metrics["train_loss"]
        rates = {"layer1": {"w": np.ones((4, 3)), "b": np.ones((4, 3))}}
        return digits_report.Run(name, grid, metrics, rates, np.array([0, 3]),
                                 verdicts.classify(metrics["train_loss"], test_acc))

    runs = [run("a", [0.5, 0.9, 0.1, nan], [1.0, 0.2, 2.3, nan]), run("b", [0.8, 0.95, 0.97, 0.12], [0.5, 0.1, 0.05, 2.3])]
    figures = []
    monkeypatch.setattr(digits_plots, "save_figure", lambda figure, path: figures.append(figure))
    digits_plots.sweep_heatmap(runs, grid, tmp_path / "heatmap.png")
    (ax, _colorbar) = figures[0].axes
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("×") == 1  # a's η = 1 diverged
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in hatched) == [(2, 0), (3, 1)]  # (column, row)
    best = [p for p in ax.patches if not p.get_hatch()]
    assert [round(p.get_x() + 0.5) for p in best] == [1, 2]  # lowest final train loss among those that learned
    assert "1 runs" in ax.get_title() and "2 runs" in ax.get_title()


def test_loss_plots_keep_exact_zeros_on_the_log_axis():
    from adaptx_demo import digits_plots

    clipped, any_low = digits_plots.clip_to_floor(np.array([1.0, 1e-9, 0.0, np.nan]), 1e-6)
    assert any_low and clipped[0] == 1.0 and np.all(clipped[1:3] == 1e-6) and np.isnan(clipped[3])
    assert not digits_plots.clip_to_floor(np.array([1.0, 0.5]), 1e-6)[1]


def test_one_of_steps_exactly_like_the_chosen_optimizer():
    import jax.numpy as jnp

    import adaptx
    from adaptx_demo import descent

    def loss(p):
        return jnp.sum((p - 1.0) ** 2 * jnp.array([1.0, 100.0]))

    start = jnp.array([-1.0, 2.0])
    txs = [adaptx.sgd(0.01), adaptx.adam(0.01), adaptx.rmsprop(0.01)]
    chosen = descent.one_of(txs)
    for index, tx in enumerate(txs):
        state = descent.choose(chosen.init(start), index, learning_rate=0.05)
        alone = adaptx.set_hyperparams(tx.init(start), learning_rate=0.05)
        ours = descent.compiled(lambda p: descent.descend(chosen, loss, p, 20, state), start)
        theirs = descent.compiled(lambda p: descent.descend(tx, loss, p, 20, alone), start)
        np.testing.assert_array_equal(np.asarray(ours.params), np.asarray(theirs.params))


def test_progress_without_tqdm_prints_labelled_phase_lines(monkeypatch, capsys):
    import adaptx
    from adaptx_demo.progress import Progress

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with Progress(3) as progress:
        with progress.phase("compiling the first thing", work=2):
            pass
        with progress.phase("plotting"):
            pass
    err = capsys.readouterr().err
    assert "[0/3] compiling the first thing ..." in err and "[2/3] compiling the first thing:" in err
    assert "[3/3] plotting:" in err
    assert [label for label, _ in progress.times] == ["compiling the first thing", "plotting"]
    # adaptx.sweep's bar is optional too: without tqdm it prints plain lines.
    import jax.numpy as jnp

    result = adaptx.sweep(lambda p, _: jnp.sum(p ** 2), adaptx.sgd(0.1), jnp.ones(2), None,
                          {"learning_rate": [0.1, 0.2]}, steps=4, progress="tiny sweep")
    assert result.losses.shape == (2, 4)
    assert "tiny sweep: 4/4 steps" in capsys.readouterr().err


def test_the_library_imports_none_of_the_demo_extras():
    import subprocess

    code = ("import sys, adaptx; heavy = [m for m in ('matplotlib', 'sklearn', 'tqdm', 'adaptx_demo')"
            " if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_missing_scikit_learn_tells_the_user_what_to_install(monkeypatch, capsys):
    for name in list(sys.modules):
        if name.split(".")[0] == "adaptx_demo":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", "unused"])
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install "adaptx[demo]"' in error and "scikit-learn" in error
