"""Training speed of ResNet-18 at 224 px on the CPU: fp32 vs bf16 autocast (vs bf16 + channels_last).

One round is one full training step (forward, NLL loss, backward, fused Adam step) on a batch of 32
random images, exactly as ``fit.train_one_epoch`` does it. ``extra_info["images_per_s"]`` is
``32 / mean round time``. Run timed with::

    pytest tests/benchmarks/test_bench_precision.py --benchmark-enable

or print the fp32 / bf16 ratio directly with ``python tests/benchmarks/test_bench_precision.py``.
In the normal (``--benchmark-disable``) run each case executes one step on two 64 px images as a smoke
test.
On a CPU without AMX or AVX512-BF16, bf16 is emulated and usually slower than fp32.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from pneumonia_cam.steps.fit import make_adam
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.runtime import autocast

CASES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16_channels_last": ("bf16", True)}


def make_step(precision: str, channels_last: bool, batch: int, size: int = 224):
    """A closure doing one training step, as fit.train_one_epoch does."""
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none").train()
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 2
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_adam(list(model.parameters()), lr=1e-3)
    device = torch.device("cpu")

    def step() -> float:
        with autocast(device, precision):
            log_p = model(x)  # (B, 3, 224, 224) -> (B, 2)
        loss = torch.nn.functional.nll_loss(log_p.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


@pytest.fixture
def all_cores(benchmark):
    """Timed runs use every core (the suite's conftest pins one thread for the tiny tests)."""
    before = torch.get_num_threads()
    if not benchmark.disabled:
        torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_speed(benchmark, case, all_cores):
    batch = 2 if benchmark.disabled else 32
    step = make_step(*CASES[case], batch=batch, size=64 if benchmark.disabled else 224)
    step()  # warm-up: oneDNN picks and caches its kernels on the first call
    loss = benchmark.pedantic(step, rounds=1 if benchmark.disabled else 5, iterations=1)
    assert loss == loss  # finite, not NaN
    if not benchmark.disabled:
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean


def measure(case: str, batch: int = 32, steps: int = 5) -> float:
    """Images per second over ``steps`` training steps after one warm-up step."""
    step = make_step(*CASES[case], batch=batch)
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


if __name__ == "__main__":
    speeds = {case: measure(case) for case in CASES}
    for case, s in speeds.items():
        print(f"{case:>20}: {s:6.1f} images/s")
    print(f"bf16 / fp32 speed ratio: {speeds['bf16'] / speeds['fp32']:.2f}x "
          f"(channels_last: {speeds['bf16_channels_last'] / speeds['fp32']:.2f}x)")
