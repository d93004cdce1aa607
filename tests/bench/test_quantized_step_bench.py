"""benchmarks/quantized_step.py runs end to end at a tiny size and, in --quick, writes nothing into
benchmarks/ (no timing is asserted)."""
import json

import pytest

from benchmarks import quantized_step, timing


def test_quick_run_reports_every_contender(tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in timing.RECORDS.iterdir()}
    result, out = quantized_step.main(["--quick", "--reps", "1", "--out", str(tmp_path)])
    assert {p.name: p.stat().st_mtime_ns for p in timing.RECORDS.iterdir()} == before
    assert out == tmp_path and set(result) == {*quantized_step.contenders(), *quantized_step.REFERENCES}
    text = (tmp_path / "quantized_step.md").read_text()
    for name in [*result, *quantized_step.train_contenders()]:
        assert f"| {name} |" in text
    recorded = json.loads((tmp_path / "quantized_step.json").read_text())
    assert recorded["results"].keys() == result.keys()
    assert recorded["meta"]["keeping_freed"].keys() == result.keys()  # the child process's rows too


def test_quick_run_refuses_the_committed_folder():
    with pytest.raises(SystemExit):
        quantized_step.main(["--quick", "--out", str(timing.RECORDS)])
