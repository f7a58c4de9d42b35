"""Where and how the computation runs: device, bf16 autocast, channels_last inputs, and RNG state.

Plumbing shared by the fit loop, the feature cache, the CAM command and distributed training.
bf16 autocast runs the matmuls and convolutions in bfloat16 where the hardware has native units for it
(CUDA GPUs with bf16, CPUs with AMX-BF16 or AVX512-BF16); weights, optimizer state and the loss stay fp32.
"""

from __future__ import annotations

import contextlib
import platform
import random

import numpy as np
import torch


# --------------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units: AMX-BF16 or AVX512-BF16.

    ``torch.backends.cpu.get_cpu_capability()`` only reports the vector ISA PyTorch dispatches to
    ("AVX512" on an AMX machine), so we read the feature flags: torch's own probes when present,
    else ``/proc/cpuinfo`` (Linux). Without these units bf16 autocast still runs, but emulated and
    usually *slower* than fp32.
    """
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - private API; fall through to cpuinfo
            pass
    flags = set(_cpuinfo().get("flags", "").split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (Linux); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where supported (see :func:`cpu_supports_bf16`), else ``"fp32"``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------
# RNG state: everything that makes the next epoch's batches and augmentations what they are
# --------------------------------------------------------------------------------------------------
def capture_rng(generator: torch.Generator | None = None) -> dict:
    """All RNG states as weights_only-safe data (tensors, ints, lists, floats)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng(state: dict, generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a batch to ``device``; 4-D tensors in NHWC memory format when ``channels_last``."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's also seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_description() -> str:
    """The CPU kind, for every reported timing: ``"AMD EPYC (family 26, model 2), AVX512-BF16, no AMX"``.

    Read from ``/proc/cpuinfo`` (Linux); elsewhere ``platform.processor()``. The bf16 units decide
    which kernels bf16 autocast runs, so two CPUs of one brand can give different timings and
    different (each bit-reproducible) training trajectories.
    """
    fields = _cpuinfo()
    if not fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    units = ", ".join(["AMX-BF16" if "amx_bf16" in flags else "no AMX",
                       "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"])
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}), {units}")
