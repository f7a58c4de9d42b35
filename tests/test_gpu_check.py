"""The GPU check script (tests/benchmarks/gpu_check.py): its path without CUDA, and what it selects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs the no-CUDA path on every machine.
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and torch.__version__ in lines[0]
    assert done.stderr == "" and not out.exists()  # nothing written, nothing run


def test_without_an_output_folder_it_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("usage: ")


def test_the_gpu_marker_selects_every_cuda_test():
    # `pytest -m gpu` is what the script runs; each test that needs CUDA must carry the marker, or the
    # GPU machine would skip it silently.
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-n0", "-p",
                           "no:cacheprovider", "tests", "lessons"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    ids = [ln for ln in done.stdout.splitlines() if "::" in ln]
    for path in [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("lessons/**/test_*.py")]:
        text = path.read_text()
        # Every file with a CUDA skip condition has at least one selected test.
        if "skipif(not torch.cuda.is_available()" in text and path != Path(__file__).resolve():
            rel = path.relative_to(ROOT).as_posix()
            assert any(i.startswith(rel + "::") for i in ids), f"{rel} needs CUDA but no test of it is marked gpu"
    assert len(ids) >= 7
