"""The CUDA path, checked and timed in one go: ``PYTHONPATH=. python tests/benchmarks/gpu_check.py OUT``.

Run it from the repository root on a machine with an NVIDIA GPU; it needs no install and no network
(torch, torchvision, numpy, scipy, matplotlib, pillow, tqdm, pytest and pytest-benchmark must be
importable). In this order, each step with its own time limit so that one slow step cannot eat the
others (about 8 minutes in all at most):

1. the CUDA tests and the GPU variants of the benchmarks, timed (``pytest -m gpu tests lessons
   --benchmark-enable``);
2. every lesson's tests on this machine (its CUDA test included);
3. the demo, ``python -m pneumonia_cam.train --device cuda``, from an empty cache (the phantoms are
   generated inside the timed run, as a student's first run does), with its phase times and test metrics;
4. the article's recipe (``--preset article``: frozen ResNet-152, 10 epochs, batch 256) at the Kaggle
   data set's size on phantoms (5,216 / 16 / 624 images, ``--val-from-train 0.1``), once on images and
   once with ``--cache-features``, with a random ResNet-152 file put where torchvision caches the
   ImageNet one (the machine has no network; the timing does not depend on the values).

Everything lands in ``OUT/gpu_check.json`` (device name, torch version, the command, every figure)
beside each step's log and run folder. Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
#: The Kaggle chest_xray set's sizes: train / val / test images.
KAGGLE_SIZES = (5216, 16, 624)
#: Seconds each step may take; their sum stays under 8 minutes.
LIMITS_S = {"gpu_tests": 110, "lesson_tests": 60, "demo": 90, "article_images": 130, "article_cached": 70}


def _env(cache: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache), TORCH_HOME=str(cache / "torch"),
                PNEUMONIA_CAM_OFFLINE="1", MPLBACKEND="Agg")


def _run(name: str, args: list[str], out: Path, env: dict) -> dict:
    """Run one step, its output in ``OUT/<name>.log``; its wall time, exit code and whether it timed out."""
    log = out / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=LIMITS_S[name]).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    wall = round(time.perf_counter() - t0, 2)
    status = "timed out" if timed_out else f"rc {rc}"
    print(f"gpu_check: {name}: {status}, {wall} s (log {log})", flush=True)
    return {"command": shlex.join(args), "rc": rc, "timed_out": timed_out, "wall_s": wall,
            "limit_s": LIMITS_S[name], "log": str(log)}


def _pytest_counts(log: Path) -> dict:
    """``{"passed": 6, "skipped": 1, ...}`` from pytest's last summary line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", lines[-1])} \
        if lines else {}


def _benchmarks(path: Path) -> list[dict]:
    """Each benchmark's name, median and its extra_info (the ratios the benchmark files report)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return [{"name": b["fullname"], "median_s": b["stats"]["median"], "rounds": b["stats"]["rounds"],
             "extra_info": b.get("extra_info", {})} for b in data.get("benchmarks", [])]


def _run_figures(run_dir: Path) -> dict:
    """The figures of one training run: per-phase times, the per-epoch times, test metrics, precision."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    timing = m.get("timing", {})
    epochs = timing.get("epoch_seconds") or []
    figures = {"timing": timing, "precision": m.get("precision"), "best_epoch": m.get("best_epoch"),
               "data": m.get("data"), "test": {k: m["test"].get(k) for k in ("accuracy", "sensitivity",
                                                                             "specificity", "auc")},
               "machine": m.get("machine")}
    if epochs:
        # The estimate a reader would make from this seed's own loop: its slowest epoch, times the epochs.
        figures["loop_estimate_s"] = round(max(epochs) * len(epochs), 2)
        figures["loop_measured_s"] = round(sum(epochs), 2)
    if m.get("localization"):
        figures["localization"] = m["localization"]
    return figures


def _random_resnet152_file(cache: Path) -> Path:
    """A random ResNet-152 state dict at the path torchvision would cache the ImageNet file at."""
    import torchvision

    from pneumonia_cam.support.weights import expected_weights_file

    os.environ["TORCH_HOME"] = str(cache / "torch")
    path = expected_weights_file("resnet152")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: PYTHONPATH=. python tests/benchmarks/gpu_check.py OUT_DIR", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing to check; run it on a machine with an NVIDIA GPU")
        return 0
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    report = {"command": shlex.join([py, *sys.argv]), "device_name": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}
    steps = report["steps"]

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    # 1-2. tests (their own empty cache; the suite's conftest sets the offline rule itself)
    env = _env(out / "cache_tests")
    bench = out / "benchmarks.json"
    steps["gpu_tests"] = _run("gpu_tests", [py, "-m", "pytest", "-m", "gpu", "tests", "lessons", "-q", "-n0",
                                            "-p", "no:cacheprovider", "--benchmark-enable",
                                            f"--benchmark-json={bench}"], out, env)
    steps["gpu_tests"]["counts"] = _pytest_counts(out / "gpu_tests.log")
    steps["gpu_tests"]["benchmarks"] = _benchmarks(bench)
    save()
    steps["lesson_tests"] = _run("lesson_tests", [py, "-m", "pytest", "lessons", "-q", "-n0",
                                                  "-p", "no:cacheprovider"], out, env)
    steps["lesson_tests"]["counts"] = _pytest_counts(out / "lesson_tests.log")
    save()

    # 3. the demo on the GPU, from an empty cache
    env = _env(out / "cache_demo")
    runs = out / "runs"
    steps["demo"] = _run("demo", [py, "-m", "pneumonia_cam.train", "--device", "cuda", "--out-dir", str(runs),
                                  "--name", "demo_cuda", "--no-progress"], out, env)
    steps["demo"].update(_run_figures(runs / "demo_cuda"))
    save()

    # 4. the article's recipe at Kaggle size, on images and on cached features (one phantom cache)
    cache = out / "cache_article"
    weights = _random_resnet152_file(cache)
    env = _env(cache)
    n_train, n_val, n_test = KAGGLE_SIZES
    common = ["--preset", "article", "--device", "cuda", "--phantom-n-train", str(n_train),
              "--phantom-n-val", str(n_val), "--phantom-n-test", str(n_test), "--val-from-train", "0.1",
              "--out-dir", str(runs), "--no-progress"]
    for name, extra in (("article_images", []), ("article_cached", ["--cache-features"])):
        steps[name] = _run(name, [py, "-m", "pneumonia_cam.train", *common, "--name", name, *extra], out, env)
        steps[name].update(_run_figures(runs / name))
        steps[name]["weights_file"] = f"random ResNet-152 state dict at {weights}"
        save()

    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["all_ok"] = all(s["rc"] == 0 for s in steps.values())
    save()
    print(f"gpu_check: {'all steps passed' if report['all_ok'] else 'some steps failed'}; "
          f"figures in {out / 'gpu_check.json'}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
