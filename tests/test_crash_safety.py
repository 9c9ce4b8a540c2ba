"""Crash safety: SIGKILL a CPU training run at random moments, including in the middle of checkpoint writes.

Every time, the newest checkpoint on disk must load, and resuming from it must end at exactly the weights (and
the loss log) of an uninterrupted run with the same seed.
"""
from __future__ import annotations

import glob
import os
import random
import time

import torch

from train_helpers import TINY, make_tiny_dataset, read_log, run_train, start_train
from utils.loading.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from utils.training.checkpoints import latest_checkpoint

MAX_ITER = 30
KILLS = 12


def _check_loads(path: str, max_iter: int) -> int:
    ckpt = read_checkpoint(path)  # the one-line-error loader; raises on a torn file
    assert ckpt["format"] == CHECKPOINT_FORMAT and 1 <= ckpt["iteration"] <= max_iter
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    return ckpt["iteration"]


def _rows(log: str) -> int:
    """Training iterations logged so far (header excluded)."""
    try:
        with open(log) as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return 0


def _iteration(path) -> int:
    return read_checkpoint(path)["iteration"] if path else 0


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        time.sleep(0.002)


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    data = make_tiny_dataset(str(tmp_path / "data"), num=6, seed=2)
    args = TINY + ["--dataset_root", data, "--max_iter", str(MAX_ITER), "--save_every", "1", "--batch_norm",
                   "--augment", "flip", "--optimizer", "adamw", "--seed", "11"]
    logs = str(tmp_path / "logs")
    ref = run_train(args + ["--save_folder", str(tmp_path / "ref"), "--save_every", "1000"], logs, tag="ref")
    assert ref.process.exitcode == 0, ref.stderr

    ref_log = read_log(str(tmp_path / "ref" / "ssd300_custom_log.csv"))
    step_seconds = ref_log[-1]["elapsed_s"] / MAX_ITER
    folder = str(tmp_path / "crash")
    log = os.path.join(folder, "ssd300_custom_log.csv")
    # widen the window between writing the temporary file and renaming it, so kills land inside writes
    env = {"SSD_TEST_SAVE_DELAY": "0.08"}
    rng = random.Random(0)
    mid_write = 0
    progress = [0]
    for k in range(KILLS):
        resume = ["--resume", "latest"] if latest_checkpoint(folder, 300, "custom") else []
        rows = _rows(log)
        run = start_train(args + ["--save_folder", folder] + resume, logs, env=env, tag="crash")
        if k % 3 == 0:  # any early moment: start-up, data loading, the first step
            time.sleep(rng.uniform(0.05, 0.5))
        elif k % 3 == 1:  # while a checkpoint is being written: its temporary file exists
            _wait_for(lambda: glob.glob(os.path.join(folder, ".ssd300_custom_*.pth.*.tmp")))
            time.sleep(rng.uniform(0.0, 0.04))
        else:  # somewhere in a training step, once this run has trained at least one
            resumed_at = _iteration(latest_checkpoint(folder, 300, "custom"))
            _wait_for(lambda: _rows(log) > max(rows, resumed_at))
            time.sleep(rng.uniform(0.0, step_seconds))
        run.process.kill()
        run.process.join()
        assert run.process.exitcode is not None and run.process.exitcode < 0, \
            f"kill {k} came after the run ended; stderr:\n{run.stderr}"
        if glob.glob(os.path.join(folder, ".ssd300_custom_*.pth.*.tmp")):
            mid_write += 1
        newest = latest_checkpoint(folder, 300, "custom")
        if newest is not None:
            progress.append(_check_loads(newest, MAX_ITER))
            # the highest-numbered file too (the pointer may lag it by one if the kill hit in between)
            numbered = sorted(glob.glob(os.path.join(folder, "ssd300_custom_[0-9]*.pth")),
                              key=lambda p: int(p.rsplit("_", 1)[1][:-4]))
            if numbered:
                _check_loads(numbered[-1], MAX_ITER)
    assert mid_write >= KILLS // 3, f"only {mid_write} kills landed inside a checkpoint write"
    assert progress == sorted(progress) and progress[-1] > 0, progress  # resumed runs moved on, never back
    print(f"kills {KILLS}, inside a checkpoint write {mid_write}, newest iteration after each kill {progress[1:]}")

    done = run_train(args + ["--save_folder", folder, "--resume", "latest"], logs, tag="finish")
    assert done.process.exitcode == 0, done.stderr
    assert not glob.glob(os.path.join(folder, ".*.tmp"))  # temporary files of killed writes are cleaned up
    expected = read_checkpoint(str(tmp_path / "ref" / "ssd300_custom_final.pth"))
    got = read_checkpoint(os.path.join(folder, "ssd300_custom_final.pth"))
    assert got["iteration"] == expected["iteration"] == MAX_ITER
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    # the loss log reads as one uninterrupted run with the same numbers
    crash_log = read_log(os.path.join(folder, "ssd300_custom_log.csv"))
    assert [r["iteration"] for r in crash_log] == list(range(1, MAX_ITER + 1))
    assert [r["loss"] for r in crash_log] == [r["loss"] for r in ref_log]
