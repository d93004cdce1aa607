"""benchmarks/plain_path.py runs end to end at tiny sizes, reports every row and, in --quick, writes nothing
into benchmarks/ (no timing is asserted)."""
import json

from benchmarks import plain_path, timing

TINY = dict(eqn_leaves=3, build_leaves=(2, 3), repeats=1, n=64, step_reps=1)


def test_tiny_run_reports_every_row(tmp_path, monkeypatch):
    measure = plain_path.measure
    monkeypatch.setattr(plain_path, "measure", lambda **_: measure(**TINY, log=lambda *_: None))
    before = {p.name: p.stat().st_mtime_ns for p in timing.RECORDS.iterdir()}
    res, text = plain_path.main(["--quick", "--write", "--out", str(tmp_path)])
    assert {p.name: p.stat().st_mtime_ns for p in timing.RECORDS.iterdir()} == before

    names = [row[0] for row in plain_path.targets(res)]
    for opt in plain_path.OPTIMIZERS:
        for needle in ("eqns/leaf", "trace+compile at 2 leaves", "trace+compile at 3 leaves", "step on 64", "recompiles"):
            assert any(name.startswith(f"{opt}: {needle}") for name in names), (opt, needle)
        # one row each in the eqns, step and recompiles tables, one per contender and size in the build table
        assert sum(line.startswith(f"| {opt} |") for line in text.splitlines()) == 3 + 3 * 2
        assert res["recompiles"][opt]["adaptx"] == 0
    assert "adam: print length ≤ inject_hyperparams'" in names
    for name in names:
        assert f"| {name} |" in text

    assert (tmp_path / "plain_path.md").read_text() == text
    recorded = json.loads((tmp_path / "plain_path.json").read_text())
    assert [t["target"] for t in recorded["targets"]] == names


def test_render_with_before_table(tmp_path):
    """--render re-renders a recorded run without measuring; --before puts the before → after table on top."""
    recorded = timing.RECORDS / "plain_path_before.json"
    res, text = plain_path.main(["--render", str(recorded), "--before", str(recorded), "--write", "--out", str(tmp_path)])
    assert text.index("## Before → after") < text.index("## Targets")
    for opt in plain_path.OPTIMIZERS:
        for figure in ("eqns/leaf", "trace+compile s, 300 leaves", "trace+compile s, 1000 leaves", "step ms", "print length"):
            assert any(line.startswith(f"| {figure}") and f"| {opt} |" in line for line in text.splitlines()), (figure, opt)
    assert (tmp_path / "plain_path.md").read_text() == text
    assert json.loads((tmp_path / "plain_path.json").read_text())["results"] == json.loads(recorded.read_text())["results"]
