"""Tiny seeded fixtures for tests/: small enough that the whole suite runs on a laptop CPU.

The one-thread fixture that every test uses is in the root ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumonia_cam.support.phantoms import PhantomConfig, generate


# --- training CLI, checkpoints, resume, determinism --------------------------------------------------
@pytest.fixture(scope="session")
def tiny_kaggle_root(tmp_path_factory) -> Path:
    """A 64 px phantom data set in Kaggle layout: train 16, val 8, test 8 images.

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
