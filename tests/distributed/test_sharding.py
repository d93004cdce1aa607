"""Sharding on 8 simulated CPU devices, each check in a subprocess so this process keeps one device."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_on_8_devices(*argv: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.mark.parametrize("checks", [("auto",), ("explicit", "zero1", "checkpoint"),
                                    pytest.param(("kernel-auto", "kernel-explicit"), marks=pytest.mark.kernel)])
def test_state_follows_param_sharding(checks):
    """init (eager and jitted) and jitted steps keep each param's NamedSharding; numbers match one device."""
    out = run_on_8_devices("tests/distributed/_sharding_check.py", *checks)
    assert out.count("PASS") == len(checks), out
    print(out)


def test_zero1_example_saves_state_memory():
    out = run_on_8_devices("examples/zero1_sharding.py", "--steps", "3")
    print(out)
    assert out.startswith("8 devices")
    found = dict(re.findall(r"per device, (replicated|ZeRO-1):\s+([\d,]+) bytes", out))
    replicated, zero1 = (int(found[layout].replace(",", "")) for layout in ("replicated", "ZeRO-1"))
    assert zero1 * 7 < replicated
    # Bit for bit: both runs compute the same gradient program (params and batch are laid out
    # alike) and the same elementwise Adam step, ZeRO-1 on slices cut at element boundaries;
    # XLA fuses both alike whatever the ISA, so each element sees the same operations.
    assert re.search(r"largest difference from the replicated run: 0\.00e\+00", out), out



def test_quantized_blocks_never_straddle_shards():
    """Quantized moments are blocked per shard, shard like their params and step as on one device,
    Adam's native step without a collective; a sweep of it over several devices too."""
    out = run_on_8_devices("tests/distributed/_quantized_sharding_check.py", "auto", "explicit")
    assert out.count("PASS") == 3, out
