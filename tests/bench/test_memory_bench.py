"""benchmarks/memory.py's cheap parts run (no timing asserted; the full run is ``python -m benchmarks.memory``)."""
from benchmarks import memory


def test_bytes_per_parameter_meet_the_targets():
    rows = memory.bytes_per_parameter()
    assert rows["adam 8-bit"] <= 2.05 and rows["adam 4-bit"] <= 1.05 and rows["adafactor"] <= 0.01
    assert rows["adam float32"] >= 8
