"""Getting the pretrained weights file: torchvision's cache, the download, the offline rules.

The article writes ``models.resnet152(pretrained=True)`` and torchvision does the rest. This module is
that rest, spelled out, so that a missing or broken file is one clear line instead of a traceback:

* ``weights="imagenet"`` means torchvision's ``IMAGENET1K_V1`` file (for every ResNet, the old
  ``pretrained=True``; ``.DEFAULT`` would silently pick ``IMAGENET1K_V2`` for ResNet-50/101/152, a
  newer training recipe). It is read from torchvision's cache (``$TORCH_HOME/hub/checkpoints/``) when
  it is there, otherwise downloaded into that cache with a progress bar and torchvision's hash check.
* Offline (``offline=True``, ``--offline`` or ``PNEUMONIA_CAM_OFFLINE=1``) a missing file raises
  :class:`WeightsUnavailableError`: one line naming the exact file expected, and the alternatives
  ``--weights none`` / ``--weights PATH``.
* ``weights=PATH`` reads a local state-dict file: a torchvision-format backbone or one of our
  ``best.pt`` / ``last.pt`` checkpoints (their ``"model"``), always with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from pneumonia_cam.support.checkpoint import file_kind

#: Any value but "" or "0" forbids downloads, whatever ``offline`` says (set in CI and by the tests).
OFFLINE_ENV = "PNEUMONIA_CAM_OFFLINE"
#: For tests only: a URL on this machine (127.0.0.1) that replaces torchvision's download URL. Its last
#: component names the cached file and must follow torchvision's ``name-<sha256 prefix>.ext``.
URL_ENV = "PNEUMONIA_CAM_WEIGHTS_URL"
#: Seconds a download may wait for the server (to connect, or for the next bytes) before it fails.
DOWNLOAD_TIMEOUT_S = 60.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (missing offline, download failed, wrong file)."""


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """The weights enum that matches the article's deprecated ``pretrained=True``.

    Example: ``imagenet_weights("resnet152") is ResNet152_Weights.IMAGENET1K_V1``.

    Raises:
        ValueError: torchvision has no model called ``arch``.
    """
    try:
        return torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"unknown arch {arch!r}: torchvision has no IMAGENET1K_V1 weights for it") from None


def expected_weights_file(arch: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``arch``: ``<hub dir>/checkpoints/<file>``.

    The file name is the last component of the enum's download URL (e.g. ``resnet18-f37072fd.pth``;
    of the tests' ``$PNEUMONIA_CAM_WEIGHTS_URL`` when that is set),
    and the hub dir is ``torch.hub.get_dir()`` (``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``).
    """
    filename = os.path.basename(urlparse(_imagenet_url(arch)).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def downloads_allowed(offline: bool = False) -> bool:
    """False when ``offline`` is True or ``$PNEUMONIA_CAM_OFFLINE`` holds anything but "" or "0"."""
    return not offline and os.environ.get(OFFLINE_ENV, "") in ("", "0")


def load_backbone(model: nn.Module, arch: str, weights: str | os.PathLike = "none", offline: bool = False,
                  progress: bool = True) -> nn.Module:
    """Load the backbone weights that ``weights`` names into ``model``, in place (nothing for ``"none"``).

    Only the backbone: the ImageNet ``fc`` (1000, K) cannot fit a two-class head, and the head is new
    anyway, so every ``fc.`` key of the file is ignored, whatever its shape.

    Args:
        model: a torchvision ``arch`` built with ``weights=None``.
        arch: the architecture, for the file name and the messages.
        weights: ``"imagenet"`` (cached, or downloaded when allowed), ``"none"``, or a path to a state dict.
        offline: never download (see :func:`downloads_allowed`).
        progress: show the download's progress bar on stderr.

    Returns:
        ``model`` itself.

    Raises:
        WeightsUnavailableError: weights are missing (offline), their download failed (no connection,
            connection lost, hash mismatch), the file is not a state dict, or it does not fit ``arch``.
    """
    state = _read_state(arch, weights, offline, progress)
    if state is None:
        return model
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        bad = (missing + list(result.unexpected_keys))[:3]
        raise WeightsUnavailableError(
            f"weights {weights} do not fit {arch} ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {bad}); "
            f"pass weights saved from a {arch}, or --weights none"
        )
    return model


def _imagenet_url(arch: str) -> str:
    """torchvision's download URL for ``arch``'s IMAGENET1K_V1 file, or the tests' local override."""
    url = os.environ.get(URL_ENV)
    if not url:
        return imagenet_weights(arch).url
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise WeightsUnavailableError(f"${URL_ENV}={url}: this override is for tests and must point to "
                                      f"127.0.0.1; unset it to download from torchvision's server")
    return url


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Bound every socket wait of the download (torch.hub's urlopen has no timeout of its own)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _download_imagenet_state(arch: str, path: Path, progress: bool) -> dict:
    """Download ``arch``'s ImageNet file into ``path`` exactly as torchvision does, and load it.

    ``torch.hub.load_state_dict_from_url(check_hash=True)`` is what torchvision's
    ``weights.get_state_dict`` calls: it streams into a ``.partial`` file next to ``path``, checks that
    the SHA-256 of the bytes starts with the hex digits after the last '-' of the file name
    (``resnet18-f37072fd.pth``), and only then renames it to ``path``; on any failure the partial
    file is deleted, so the cache never holds a half-written file.
    """
    url = _imagenet_url(arch)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                                      progress=progress, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, refused, reset, timeout, HTTP error, hash mismatch, unreadable file
        text = str(exc).splitlines()[0][:160] if str(exc) else "no details"
        if isinstance(exc, RuntimeError) and "invalid hash value" in text:
            # A connection closed early ends the stream without an error, so short data lands here too.
            reason = f"the data received is incomplete or corrupted: {text}"
        else:
            reason = f"{type(exc).__name__}: {text}"
    # torch.hub deletes its .partial file on failure; a file at ``path`` arrived whole but does not load.
    kept = f"delete {path}" if path.exists() else "nothing was saved"
    raise WeightsUnavailableError(
        f"downloading the ImageNet weights for {arch} from {url} failed ({reason}); {kept}. "
        f"Run again to retry, put the file at {path} yourself, or use --weights none or --weights PATH"
    ) from None


def _read_state(arch: str, weights: str | os.PathLike, offline: bool = False,
                progress: bool = True) -> dict | None:
    """Read the state dict that ``weights`` names; download only for ``"imagenet"`` when allowed."""
    if isinstance(weights, str) and weights.lower() == "none":
        return None
    state = None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        path = expected_weights_file(arch)
        if not path.is_file() and downloads_allowed(offline):
            state = _download_imagenet_state(arch, path, progress)
        elif not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights for {arch} ({imagenet_weights(arch)}) are not cached and downloads are "
                f"off (--offline or ${OFFLINE_ENV}): put the file at {path} (set $TORCH_HOME to use "
                f"another folder), or use --weights none (random init) or --weights PATH (a local state-dict file)"
            )
    else:
        path = Path(weights)
        if path.is_dir():
            raise WeightsUnavailableError(
                f"weights {path} is a folder, not a file; pass a state-dict file (a torchvision .pth, or a "
                f"run's best.pt), --weights imagenet or --weights none"
            )
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file {path} does not exist; use --weights imagenet (cached file), "
                f"--weights none, or an existing --weights PATH"
            )
        kind = file_kind(path)
        if kind is not None:
            raise WeightsUnavailableError(
                f"weights file {path} is {kind}, not a PyTorch state dict; pass a torchvision .pth or a run's "
                f"best.pt, --weights imagenet or --weights none"
            )
    try:
        # weights_only=True: a weights file is data, and unpickling arbitrary objects could run code.
        state = torch.load(path, map_location="cpu", weights_only=True) if state is None else state
    except Exception as exc:  # truncated, not a torch file, or holds non-tensor objects
        raise WeightsUnavailableError(
            f"cannot read weights file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            f"replace it with a valid state dict, or use --weights none"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our checkpoints (best.pt / last.pt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"weights file {path} does not hold a state dict (name -> tensor); use --weights none"
        )
    return state
