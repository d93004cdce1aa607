"""benchmarks/train_step_share.py runs end to end at tiny sizes (the 8-device case in its subprocess), reports
every target and, in --quick, writes nothing into benchmarks/ (no timing is asserted)."""
import json

import pytest

from benchmarks import train_step_share as share

TINY = dict(n=256, leaves=3, reps=1, build_repeats=1, side=16)


@pytest.mark.kernel
def test_tiny_run_reports_every_target(tmp_path, monkeypatch):
    measure = share.measure
    monkeypatch.setattr(share, "measure", lambda **_: measure(**TINY, log=lambda *_: None))
    before = {p.name: p.stat().st_mtime_ns for p in share.HERE.iterdir()}
    res, text = share.main(["--quick", "--write", "--out", str(tmp_path)])
    assert {p.name: p.stat().st_mtime_ns for p in share.HERE.iterdir()} == before

    rows = share.targets(res)
    names = [row[0] for row in rows]
    for case in share.SINGLE:
        assert f"{case} 1 leaf: optimizer share adaptx / optax" in names
        assert res["single"][case]["explain"] == "runs the one-pass kernel"
        assert res["single"][case]["runs"]["adaptx"]["hlo"]["kernel_calls"] >= 1
        assert res["single"][case]["runs"]["optax"]["hlo"]["kernel_calls"] == 0
    assert any(name.startswith("adam 1 leaf: optimizer share adaptx / torch") for name in names)
    for needle in ("optimizer share of step, adaptx / optax", "optimizer share of step, adaptx flat_state / optax",
                   "optimizer share of trace+compile, adaptx flat_state / optax"):
        assert f"3 leaves: {needle}" in names
    assert set(res["many"]["explain"].values()) == {"runs the one-pass kernel"}
    assert "bf16 params: adaptx optimizer share, bfloat16 / float32" in names
    sharded = res["sharded"]
    assert sharded["devices"] == 8 and sharded["explain"] == "runs the one-pass kernel" and sharded["all_gathers"] == 0
    assert len(sharded["bytes_per_device"]["adaptx"]) == 8
    assert sharded["bytes_per_device"]["adaptx"] == sharded["bytes_per_device"]["plain"]
    for name in names:
        assert f"| {name} |" in text

    assert (tmp_path / "train_step_share.md").read_text() == text
    recorded = json.loads((tmp_path / "train_step_share.json").read_text())
    assert [t["target"] for t in recorded["targets"]] == names

    # the RESULTS.md section: written next to an existing RESULTS.md, replacing an older copy, keeping what follows
    heading = share.results_section(recorded).splitlines()[0]
    (tmp_path / "RESULTS.md").write_text(f"# results\n\n{heading}\n\nold figures\n\n## Later part\n\nkept\n")
    section = share.write_section(recorded, tmp_path)
    results = (tmp_path / "RESULTS.md").read_text()
    assert results.count(heading) == 1 and "old figures" not in results and "## Later part" in results
    assert results.endswith(section) and (tmp_path / share.SECTION.name).read_text() == section
    for name in names:
        assert f"| {name} |" in section


def test_hlo_summary_counts_param_sized_copies():
    import jax.numpy as jnp

    params = {"w": jnp.zeros((1024,), jnp.float32)}
    hlo = ("HloModule m\n\n%fused (p: f32[1024]) -> f32[1024] {\n  %c = f32[1024]{0} copy(f32[1024]{0} %p)\n}\n\n"
           "ENTRY %main (a: f32[1024]) -> f32[1024] {\n  %copy.1 = f32[1024]{0} copy(%a)\n"
           "  %copy.2 = s32[] copy(%b)\n  %copy.3 = f32[1024]{0} copy(%copy.1)\n"
           '  %k = (f32[1024]{0}) custom-call(%copy.3), custom_call_target="adaptx_fused_step"\n}\n')
    summary = share.hlo_summary(hlo, params)
    assert summary["copies"] == 2 and summary["copies_over_params"] == 2.0 and summary["kernel_calls"] == 1
