"""Checkpoints survive SIGKILL mid-save and refuse what they cannot vouch for: corruption, another optimizer or dtype, a partial directory."""
import os
import pathlib
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptx
from adaptx import checkpoint

from _crash_saver import checkpoint_at, optimizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = checkpoint_at(0)[0]


def assert_is_checkpoint(restored, i):
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(checkpoint_at(i))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_sigkill_at_random_moments_always_leaves_a_complete_checkpoint(tmp_path):
    """20 children each overwrite one checkpoint in a loop until SIGKILLed at a random moment.

    Each child is killed 0-0.4 s after its first save returned (a save takes
    ~0.15 s here), so the kills land in every phase of the saves that follow.
    After every kill the newest complete checkpoint restores bit-identically,
    and it is never older than the last save that returned.
    """
    directory = tmp_path / "ckpt"
    checkpoint.save(directory, *checkpoint_at(0))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ADAPTX_TEST_JAX_CACHE": str(tmp_path / "jax-cache"),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    zygote = subprocess.Popen([sys.executable, str(ROOT / "tests" / "distributed" / "_crash_saver.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.split()) for line in zygote.stdout], daemon=True).start()
    rng = random.Random(11)
    newest_saved, mid_save = 0, 0
    try:
        for _ in range(20):
            zygote.stdin.write(f"{directory}\n")
            zygote.stdin.flush()
            while (line := lines.get(timeout=60))[0] != "saved":
                pid = int(line[1])
            newest_saved = int(line[2])
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)
            while (line := lines.get(timeout=60))[0] != "reaped":
                last = line[0]
                newest_saved = int(line[2]) if last == "saved" else newest_saved
            mid_save += last == "saving"

            assert checkpoint.latest(tmp_path) == str(directory)
            params, state = checkpoint.restore(directory, optimizer(), TEMPLATE)
            found = int(state.count)
            assert found >= newest_saved, f"a completed save ({newest_saved}) was lost: found {found}"
            assert_is_checkpoint((params, state), found)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    print(f"{mid_save} of 20 kills landed mid-save")
    assert mid_save >= 10


def test_an_interrupted_overwrite_is_found_and_finished(tmp_path):
    """Killed between its two renames: the directory is gone, the old one and the new one lie beside it."""
    directory = str(tmp_path / "ckpt")
    checkpoint.save(directory, *checkpoint_at(1))
    os.rename(directory, directory + ".adaptx-old")
    checkpoint.save(tmp_path / "staging", *checkpoint_at(2))
    os.rename(tmp_path / "staging", directory + ".adaptx-new")
    assert checkpoint.latest(tmp_path) == directory
    assert_is_checkpoint(checkpoint.restore(directory, optimizer(), TEMPLATE), 2)
    checkpoint.save(directory, *checkpoint_at(3), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert_is_checkpoint(checkpoint.restore(directory, optimizer(), TEMPLATE), 3)


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for step in (2, 10, 7):
        checkpoint.save(tmp_path / f"step_{step}", *checkpoint_at(step))
    (tmp_path / "step_99.adaptx-new").mkdir()  # a save that never finished
    assert checkpoint.latest(tmp_path) == str(tmp_path / "step_7")
    with pytest.raises(FileExistsError, match=r"step_7 already exists: pass overwrite=True"):
        checkpoint.save(tmp_path / "step_7", *checkpoint_at(8))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint directory .*nowhere"):
        checkpoint.latest(tmp_path / "nowhere")


def test_a_flipped_bit_is_an_error_naming_the_array(tmp_path):
    checkpoint.save(tmp_path / "good", *checkpoint_at(5))
    data = max((f for f in (tmp_path / "good").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    rng = np.random.default_rng(0)
    for trial in range(3):
        bad = tmp_path / f"bad{trial}"
        shutil.copytree(tmp_path / "good", bad)
        target = bad / data.relative_to(tmp_path / "good")
        raw = bytearray(target.read_bytes())
        raw[int(rng.integers(len(raw) // 4, len(raw)))] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(raw))
        with pytest.raises(ValueError, match=rf"the checkpoint {bad}: (params|opt_state)\.\S+ does not match the"
                                             r" checksum saved with it; the file holding it is corrupt"):
            checkpoint.restore(bad, optimizer(), TEMPLATE)


def test_another_optimizer_with_the_same_arrays_is_refused(tmp_path):
    params = {"w": jnp.ones((2, 3))}
    checkpoint.save(tmp_path / "adam", params, adaptx.adam(1e-3).init(params))
    with pytest.raises(ValueError, match=r"the checkpoint .*adam was written by another optimizer: its state at"
                                         r" opt_state\.inner_state\.0 is AdamMoments, the optimizer restored into"
                                         r" has AdamaxMoments there"):
        checkpoint.restore(tmp_path / "adam", adaptx.adamax(), params)


def test_another_dtype_is_refused_unless_cast_is_asked_for(tmp_path):
    params = {"w": jnp.asarray([1.5, -2.25, 3.0], jnp.float32)}
    tx = adaptx.sgd(0.1, momentum=0.9)
    checkpoint.save(tmp_path / "f32", params, tx.init(params))
    as_bf16 = {"w": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"f32 holds params\.w as float32, but the one restored into is bfloat16:"
                                         r" pass cast=True to convert it"):
        checkpoint.restore(tmp_path / "f32", tx, as_bf16)
    restored, state = checkpoint.restore(tmp_path / "f32", tx, as_bf16, cast=True)
    assert [x.dtype for x in jax.tree.leaves(state)] == [
        x.dtype for x in jax.tree.leaves(checkpoint.abstract_state(tx, as_bf16))]  # a float32 momentum stays one
    np.testing.assert_array_equal(restored["w"], params["w"].astype(jnp.bfloat16))


def test_missing_and_partial_directories_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no checkpoint at {tmp_path}/absent"):
        checkpoint.restore(tmp_path / "absent", optimizer(), TEMPLATE)
    checkpoint.save(tmp_path / "whole", *checkpoint_at(1))
    shutil.copytree(tmp_path / "whole", tmp_path / "unfinished")
    (tmp_path / "unfinished" / checkpoint.MANIFEST).unlink()  # as a save killed before its end leaves it
    with pytest.raises(ValueError, match=rf"{tmp_path}/unfinished is not a complete checkpoint \(it has no"
                                         r" adaptx\.json\): its save was interrupted"):
        checkpoint.restore(tmp_path / "unfinished", optimizer(), TEMPLATE)
    shutil.copytree(tmp_path / "whole", tmp_path / "damaged")
    shutil.rmtree(next((tmp_path / "damaged").glob("ocdbt.process_0")))
    os.remove(tmp_path / "damaged" / "manifest.ocdbt")
    with pytest.raises(ValueError, match=rf"the checkpoint {tmp_path}/damaged could not be read .*; it is damaged"):
        checkpoint.restore(tmp_path / "damaged", optimizer(), TEMPLATE)
