"""benchmarks/quantized_quality.py runs end to end at a tiny size (two optimizers, 3 steps, the char LM) and, in
--quick, writes nothing into benchmarks/ (no loss is asserted: the recorded run is the measurement)."""
import json

import pytest

import adaptx
from benchmarks import quantized_quality


def test_tiny_run_writes_table_curves_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(quantized_quality, "optimizers", lambda: {
        "Adam float32": adaptx.adam(3e-3), "Adam 8-bit": adaptx.adam(3e-3, mu_dtype=adaptx.Quantized(8),
                                                                     nu_dtype=adaptx.Quantized(8))})
    before = {p.name: p.stat().st_mtime_ns for p in quantized_quality.HERE.iterdir()}
    result, out = quantized_quality.main(["--quick", "--steps", "3", "--tasks", "char LM",
                                                 "--out", str(tmp_path)])
    assert {p.name: p.stat().st_mtime_ns for p in quantized_quality.HERE.iterdir()} == before
    assert set(result) == {"char LM"}
    text = (tmp_path / "quantized_quality.md").read_text()
    for rows in result.values():
        assert set(rows) == {"Adam float32", "Adam 8-bit"} and all(len(r["curve"]) == 3 for r in rows.values())
        for name in rows:
            assert f"| {name} |" in text
    assert (tmp_path / "quantized_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "quantized_quality.json").read_text())["results"].keys() == result.keys()


def test_quick_run_refuses_the_committed_folder_and_unknown_tasks():
    with pytest.raises(SystemExit):
        quantized_quality.main(["--quick", "--out", str(quantized_quality.HERE)])
    with pytest.raises(SystemExit):
        quantized_quality.main(["--quick", "--tasks", "imagenet"])
