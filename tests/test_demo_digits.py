"""The digits demo section's quick mode writes every figure it links, and a table per optimizer."""
import re

from adaptx import demo_digits


def test_quick_mode_writes_every_promised_file(tmp_path):
    markdown = demo_digits.section(tmp_path, progress=False, quick=True)
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(demo_digits.FILES)
    for name in demo_digits.FILES:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(demo_digits.OPTIMIZERS)
    # Every optimizer learns the digits far beyond chance (10 %) at its best learning rate.
    assert all(float(row.split(" | ")[4].rstrip("%")) > 80 for row in rows)
