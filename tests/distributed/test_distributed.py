"""jax.distributed on 127.0.0.1: 2 processes x 2 CPU devices train with adaptx, checkpoint, get killed and resume."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = [sys.executable, str(ROOT / "examples" / "distributed.py"), "--steps", "3"]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run(*argv) -> str:
    done = subprocess.run([*EXAMPLE, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-6000:]}"
    return done.stdout


def final_digest(out: str, layout: str) -> str:
    return re.search(rf"^{layout}: final loss \S+, params (\w+)", out, re.M).group(1)


@pytest.fixture(scope="module")
def uninterrupted() -> str:
    out = run("--processes", "2", "--devices", "2")
    print(out)
    return out


def test_layouts_agree_and_match_one_process(uninterrupted):
    out = uninterrupted
    assert out.splitlines()[2].startswith("2 processes x 2 devices"), out
    assert final_digest(out, "zero1") == final_digest(out, "fsdp"), out
    for layout in ("data", "zero1", "fsdp"):
        worst, ulps = re.search(rf"^{layout}: largest difference from one process: (\S+) \((\S+) ulp", out, re.M).groups()
        assert float(ulps) <= 2 * 3, out  # 3 steps: reduction order only; Adam carries the rounding on
    held = {layout: [int(b.replace(",", "")) for b in re.search(
        rf"^{layout}: .*held per process \(2 devices\): ([\d,]+), ([\d,]+) bytes \(one copy: ([\d,]+)\)", out, re.M
    ).groups()] for layout in ("data", "zero1", "fsdp")}
    one_copy = held["data"][2]
    assert held["data"][:2] == [2 * one_copy] * 2  # replicated on both devices of each process
    for layout in ("zero1", "fsdp"):
        assert all(b < 0.6 * one_copy for b in held[layout][:2]), held  # a quarter per device, plus scalars


def test_killed_process_resumes_bit_identically_and_restores_on_another_count(uninterrupted, tmp_path):
    """SIGKILL process 1 after step 1 is saved; restart both from the newest checkpoint; then restore on 1 process."""
    argv = ["--layouts", "fsdp", "--no-reference", "--checkpoint", str(tmp_path)]
    launcher = subprocess.Popen([*EXAMPLE, "--processes", "2", "--devices", "2", *argv], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids, killed = [], False
    for line in launcher.stdout:
        if line.startswith("process "):
            pids.append(int(line.split()[-1]))
        if line.startswith("fsdp: saved step 1"):
            time.sleep(0.1)  # into step 2 or its save
            os.kill(pids[1], signal.SIGKILL)
            killed = True
            break
    assert killed, "the run ended before its first checkpoint"
    for pid in (pids[0], launcher.pid):  # process 0 waits on a peer that is gone: stop it and its launcher
        os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=60)

    resumed = run("--processes", "2", "--devices", "2", *argv)
    assert re.search(r"^fsdp: restored step [12] from ", resumed, re.M), resumed
    assert final_digest(resumed, "fsdp") == final_digest(uninterrupted, "fsdp"), resumed

    saved = re.findall(r"^fsdp: saved step 3 in \S+ s, params (\w+)", resumed, re.M)[-1]
    one_process = run("--processes", "1", "--devices", "2", *argv)
    assert re.search(rf"^fsdp: restored step 3 from \S+step_3 in \S+ s, params {saved}$", one_process, re.M), one_process
