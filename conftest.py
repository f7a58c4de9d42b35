"""Fixtures for every test under this folder: ``pytest``, ``pytest lessons/03_cam``, ``pytest tests``."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never download: `--weights imagenet` without the cached file is then the one-line error, in
# this process and in every subprocess a test starts. The download tests unset it for themselves.
os.environ["PNEUMONIA_CAM_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the suite's tiny models on one intra-op thread.

    Tiny models gain nothing from a second thread, and on a busy machine an OpenMP team waits at
    every barrier for a member that is descheduled. Benchmarks that measure real throughput set
    their own thread count; tests that start subprocesses pass them ``OMP_NUM_THREADS=1``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
