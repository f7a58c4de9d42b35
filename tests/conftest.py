"""Tiny seeded fixtures for tests/ (keep them tiny: the whole suite runs on 2 CPU cores).

Developers append fixtures here; nobody rewrites another developer's fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumonia_cam.phantoms import PhantomConfig, generate


# --- everyone: one torch thread ---------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the suite's tiny models on one intra-op thread.

    They gain nothing from a second thread, and on a shared 2-core machine an OpenMP team whose other
    thread is descheduled waits at every barrier: with the default 2 threads the suite ran ~4x slower
    under load. Benchmarks that measure real throughput set their own thread count. Subprocesses get
    ``OMP_NUM_THREADS=1`` from the tests that start them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- training CLI (issue 3) / checkpoints, resume, determinism (issue 7) ------------------------------
@pytest.fixture(scope="session")
def tiny_kaggle_root(tmp_path_factory) -> Path:
    """A 64 px phantom data set in Kaggle layout: train 16, val 8, test 8 images (~0.5 s to draw).

    Session-scoped and read-only by convention: tests that modify data copy it first.
    """
    return generate(tmp_path_factory.mktemp("tiny_kaggle"), PhantomConfig(size=64, n_train=16, n_val=8, n_test=8),
                    progress=False)


@pytest.fixture
def tiny_train_args(tiny_kaggle_root, tmp_path) -> list[str]:
    """CLI arguments for a training run of a few seconds: 32 px, 2 epochs, fp32, no worker processes."""
    return ["--data-dir", str(tiny_kaggle_root), "--out-dir", str(tmp_path / "runs"), "--name", "tiny",
            "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0",
            "--precision", "fp32", "--device", "cpu", "--no-progress"]
