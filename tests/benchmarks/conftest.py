"""Shared machinery of the benchmarks: paired, interleaved timing of two ways to do one thing.

Every ratio the benchmarks report is measured in *one* run of *one* test, by timing the two
variants alternately (A B, B A, A B, ...): on a shared machine the load drifts, and two variants
timed minutes apart would compare the load, not the code. The headline ratio is the median of the
per-round ratios; the ratio of the two minimum times is reported beside it.

In the normal ``pytest`` run (``--benchmark-disable``) each benchmark runs one round, untimed, on
tiny sizes (``benchmark.enabled`` is False): it still checks that the code runs and that both
variants compute the same thing. ``pytest tests/benchmarks --benchmark-enable`` runs the real sizes.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import pytest
import torch


def _sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock interval covers the kernels it launched."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(autouse=True)
def _bench_threads(request):
    """Timed runs use every core, as a real run would (the root conftest.py pins one thread for the
    suite's tiny tests), or ``$PNEUMONIA_CAM_BENCH_THREADS`` threads. On a machine other processes
    keep busy, 1 is often faster: an OpenMP team waits at every barrier for its descheduled member
    (docs/benchmarks.md shows both). Untimed runs keep one thread. Each benchmark records its
    thread count in ``extra_info["torch_threads"]``."""
    cfg = request.config
    enabled = not (cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(int(os.environ.get("PNEUMONIA_CAM_BENCH_THREADS", 0)) or os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_enabled(request) -> bool:
    """True under ``--benchmark-enable`` (real sizes); False in the normal run (tiny sizes).

    pytest-benchmark's own rule, readable by module-scoped fixtures (``benchmark.enabled`` is only
    available per test).
    """
    cfg = request.config
    return not (cfg.getoption("benchmark_disable") and not cfg.getoption("benchmark_enable"))


@pytest.fixture
def compare(benchmark) -> Callable[..., dict]:
    """``compare(a, b, names=(..., ...), rounds=..., warmup=..., device=...) -> dict`` of timings.

    ``a`` and ``b`` are zero-argument callables. One benchmark round runs both, alternating which
    goes first; pytest-benchmark's own statistics are therefore those of the *pair*. The result
    (also stored in ``benchmark.extra_info`` and printed) holds, for each name, the median and
    minimum seconds, and ``ratio`` = median over rounds of ``t_a / t_b``, ``ratio_of_mins``.
    """

    def run(a: Callable, b: Callable, *, names: tuple[str, str], rounds: int = 5, warmup: int = 1,
            device: str = "cpu") -> dict:
        times: dict[str, list[float]] = {names[0]: [], names[1]: []}
        outputs: dict[str, object] = {}
        counter = [0]

        def one_round() -> None:
            pair = [(names[0], a), (names[1], b)]
            if counter[0] % 2:
                pair.reverse()  # A B, then B A: neither always runs on a cache the other warmed
            counter[0] += 1
            for name, fn in pair:
                _sync(device)
                t0 = time.perf_counter()
                outputs[name] = fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)

        if benchmark.enabled:
            benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=warmup)
            for ts in times.values():
                del ts[:warmup]  # warm-up rounds (allocator, oneDNN/cuDNN kernel choice) do not count
        else:
            benchmark(one_round)
        ta, tb = times[names[0]], times[names[1]]
        info = {
            f"{names[0]}_s_median": statistics.median(ta), f"{names[0]}_s_min": min(ta),
            f"{names[1]}_s_median": statistics.median(tb), f"{names[1]}_s_min": min(tb),
            "ratio": statistics.median(x / y for x, y in zip(ta, tb)), "ratio_of_mins": min(ta) / min(tb),
            "rounds": len(ta), "device": str(device), "torch_threads": torch.get_num_threads(),
        }
        benchmark.extra_info.update(info)
        note = "" if benchmark.enabled else " [one untimed-mode round on tiny sizes: not a measurement]"
        print(f"\n{names[0]} / {names[1]} on {device}{note}: ratio {info['ratio']:.3f} (of mins {info['ratio_of_mins']:.3f}); "
              f"{names[0]} {info[f'{names[0]}_s_median']:.4f} s, {names[1]} {info[f'{names[1]}_s_median']:.4f} s "
              f"(medians of {len(ta)} rounds)")
        info["outputs"] = outputs
        return info

    return run
