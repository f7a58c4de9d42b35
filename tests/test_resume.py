"""Resume: SIGKILL in the middle of an epoch, ``--resume``, same result as no kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pneumonia_cam import train
from pneumonia_cam.support.checkpoint import load_checkpoint


def _without_timing(path) -> dict:
    metrics = json.loads(path.read_text())
    metrics.pop("timing")
    return metrics


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_train_args, tmp_path, capsys):
    # 3 epochs of 2 steps; StepLR(1) so a scheduler restored one epoch off would change every number;
    # augmentation on (random rotations from the global torch RNG, workers=0) so a lost RNG state would too.
    # Epoch 1 on 32 px images, epochs 2-3 on 48 px: the kill lands in the second stage, so the resume
    # must also find its way past the change of image size.
    args = tiny_train_args + ["--epochs", "3", "--step-size", "1", "--gamma", "0.5", "--image-size", "48",
                              "--early-sizes", "32"]
    runs = tmp_path / "runs"

    assert train.main(args + ["--name", "straight"]) == 0

    killed = runs / "killed"
    # One thread, like this process (tests/conftest.py): CPU results are bitwise only per thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "pneumonia_cam.train", *args, "--name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        # history.csv is written last in an epoch's saves: once it has a row, epoch 2 is under way.
        while not ((killed / "history.csv").is_file() and len((killed / "history.csv").read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "training never finished an epoch"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()  # it really died before the end
    assert 1 <= load_checkpoint(killed / "last.pt")["epoch"] < 3

    assert train.main(args + ["--name", "killed", "--resume"]) == 0
    capsys.readouterr()

    assert _without_timing(killed / "metrics.json")["history"] == _without_timing(runs / "straight" / "metrics.json")["history"]
    assert _without_timing(killed / "metrics.json") == _without_timing(runs / "straight" / "metrics.json")
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(killed / name)["model"], load_checkpoint(runs / "straight" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not list(killed.glob(".*.tmp"))  # an interrupted save's temp file was cleaned up
