"""Checkpoints: saving the trained model safely and loading it back safely.

The article saves nothing (its best weights live in a variable); a package that trains for minutes to
hours must. Two rules:

* **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed and
  fsync'ed, then renamed over the old one with ``os.replace`` (atomic on POSIX and Windows). A crash or
  a full disk mid-write leaves the previous checkpoint intact, never half a file.
* **Safe loads.** ``torch.load`` unpickles; a pickle can name any callable to run (``__reduce__``),
  so loading an untrusted ``.pt`` with ``weights_only=False`` can execute code. Every load here uses
  ``weights_only=True``, which only rebuilds tensors and plain containers, and a payload is checked on
  save to contain only such types, so everything we write can be read back that way.

Payload keys (contract): ``"model"`` (state dict), ``"config"`` (dict of
:class:`~pneumonia_cam.support.config.TrainConfig`), ``"classes"`` (list of str), ``"metrics"`` (dict);
``last.pt`` adds the fit loop's state for ``--resume``: ``"optimizer"``, ``"scheduler"``, ``"epoch"``,
``"rng"``, ``"best"``, ``"history"``, ``"precision"`` and ``"timing"``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

from pneumonia_cam.steps.model import ARCHS, build_model, check_pooling

# Types that torch.load(weights_only=True) rebuilds; anything else in a payload is a bug on our side.
_SAFE_SCALARS = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the expected model."""


def _check_safe(obj, where: str = "payload") -> None:
    """Raise TypeError if ``obj`` holds anything weights_only loading could not rebuild."""
    if isinstance(obj, _SAFE_SCALARS):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}")
            _check_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}, which weights_only loading cannot read; "
        "convert it to tensors, numbers, strings, lists or dicts"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temp file in the same folder, then it is fsynced
    and renamed over ``path``. A crash leaves either the old file or the new one, never half of one;
    on error the temp file is removed.

    Args:
        path: the file to create or replace (its folder is created if needed).
        write: called once with the open binary temp file.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_write`).

    Raises:
        TypeError: the payload holds a type ``weights_only=True`` could not load back.
    """
    _check_safe(payload)
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: one line naming the file and what is wrong (missing, truncated/corrupt,
            holds objects that are not plain data, or lacks the ``"model"`` state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with python -m pneumonia_cam.train")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: that is how a code-running pickle shows.
        # torch's message is a paragraph; keep the line that names the offending global, if any.
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
        detail = f" ({lines[0][:160]})" if lines else ""
        raise CheckpointError(
            f"refused to load {path}: it contains pickled objects that are not plain tensors/data "
            f"and could run code{detail}; only load checkpoints written by pneumonia_cam from a "
            f"source you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch checkpoint "
            f"({type(exc).__name__}); re-run training or copy the file again"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {path} has no 'model' state dict; expected a best.pt/last.pt written by "
            f"python -m pneumonia_cam.train"
        )
    return payload


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    arch: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as, load its weights, return it in eval mode.

    The architecture comes from ``payload["config"]`` (``arch``, ``dilate_layer4``, and the head's
    ``pooling``, ``lse_r``, ``topk_fraction``: the state dict alone cannot tell the poolings apart,
    their heads have the same ``fc.0.weight`` and ``fc.0.bias``) and the class count from
    ``payload["classes"]``; the model is built with ``weights="none"`` (nothing is read or downloaded
    besides ``path``).

    Args:
        path: a ``best.pt`` or ``last.pt``.
        map_location: device for the tensors.
        arch: if given, the architecture the caller expects; a different one is an error.
        num_classes: if given, the class count the caller expects.

    Returns:
        ``(model.eval(), payload)``.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the expected architecture/classes.
    """
    payload = load_checkpoint(path, map_location)
    cfg = payload.get("config") or {}
    ck_arch = cfg.get("arch", "resnet18")
    ck_classes = len(payload.get("classes") or ()) or int(payload["model"]["fc.0.bias"].numel())
    if ck_arch not in ARCHS:
        raise CheckpointError(f"checkpoint {path} names unknown arch {ck_arch!r}; expected one of {ARCHS}")
    if (arch is not None and arch != ck_arch) or (num_classes is not None and num_classes != ck_classes):
        raise CheckpointError(
            f"checkpoint {path} holds a {ck_arch} with {ck_classes} classes, but a "
            f"{arch or ck_arch} with {num_classes or ck_classes} classes was expected"
        )
    pooling = {"pooling": cfg.get("pooling", "mean"), "lse_r": float(cfg.get("lse_r", 10.0)),
               "topk_fraction": float(cfg.get("topk_fraction", 0.1))}
    try:
        check_pooling(**pooling)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has a bad head config: {exc}") from None
    model = build_model(ck_arch, weights="none", num_classes=ck_classes,
                        dilate_layer4=bool(cfg.get("dilate_layer4", False)), **pooling)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"checkpoint {path} does not fit a {ck_arch} with {ck_classes} classes as its config says "
            f"({detail})"
        ) from None
    return model.to(map_location).eval(), payload
