"""The benchmark runs end to end in --quick mode and writes its report (no timing is asserted)."""
import json

from benchmarks import run


def test_quick_run_writes_results(tmp_path, capsys):
    run.main(["--quick", "--reps", "1", "--leaves", "4", "--size-log2", "10", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["suite"] for r in results["records"]} == {"single_leaf", "many_leaves", "bf16"}
    names = {t["target"] for t in results["targets"]}
    assert "Adam 1 leaf: adaptx / optax" in names and "many leaves: step adaptx flat_state / optax" in names
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets (issue 4)" in text and "adaptx adam" in text
    assert "RESULTS.md" not in capsys.readouterr().err


def test_quick_run_never_writes_the_committed_results():
    import pytest

    from benchmarks import run

    committed = run.Path(run.__file__).parent
    with pytest.raises(SystemExit):
        run.main(["--quick", "--out", str(committed)])
