"""Fixtures for every test under this folder: ``pytest``, ``pytest lessons/03_cam``, ``pytest tests``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests never download: `--weights imagenet` without the cached file is then the one-line error, in
# this process and in every subprocess a test starts. The download tests unset it for themselves.
os.environ["PNEUMONIA_CAM_OFFLINE"] = "1"


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """One worker process per core (pytest-xdist, ``-n auto`` in pyproject.toml) for the whole suite,
    one process otherwise: for a lesson's own tests (starting workers costs more than they save), timed
    benchmarks (``--benchmark-enable``) and exercise mode (``--student``), whose per-lesson summary line
    is written by the process that ran the tests."""
    lessons = Path(__file__).parent / "lessons"
    paths = [Path(a.split("::")[0]).resolve() for a in config.args]
    only_lessons = bool(paths) and all(p == lessons or lessons in p.parents for p in paths)
    if only_lessons or config.getoption("benchmark_enable", False) or config.getoption("student", None):
        config.option.numprocesses = 0
        config.option.dist = "no"


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
