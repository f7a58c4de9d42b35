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


def file_kind(path: str | os.PathLike) -> str | None:
    """What a file is, when it is plainly not a PyTorch checkpoint; ``None`` when it could be one.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``) holding ``<name>/data.pkl``, or, in the
    legacy format, a pickle (first byte ``\\x80``). Anything else is named by its first bytes, so that
    a message can say "a JSON file" or "a PNG image" instead of an unpickling error.

    Returns:
        e.g. ``"a folder"``, ``"an empty file"``, ``"a text file"``, ``"a JSON file"``, ``"a PNG image"``,
            ``"a zip archive that is not a PyTorch checkpoint"``; or ``None``.
    """
    path = Path(path)
    if path.is_dir():
        return "a folder"
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a zip archive that is not a PyTorch checkpoint"
        except zipfile.BadZipFile:
            return None  # a checkpoint cut short: torch.load says so
        return None
    if head[:1] == b"\x80":
        return None
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                        (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document")):
        if head.startswith(magic):
            return kind
    if head[128:132] == b"DICM":
        return "a DICOM file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file that is not a PyTorch checkpoint"
    return "a JSON file" if text.lstrip()[:1] in ("{", "[") else "a text file"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: one line naming the file and what is wrong: missing, a folder, not a PyTorch
            file at all (text, JSON, an image: :func:`file_kind`), truncated or corrupt, holding
            objects that are not plain data, or lacking the ``"model"`` state dict.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass a best.pt or last.pt "
                              f"(e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with python -m pneumonia_cam.train")
    kind = file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint; pass the best.pt or last.pt "
                              f"of a run folder written by python -m pneumonia_cam.train")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: that is how a code-running pickle shows.
        # torch's message is a paragraph; keep the line that names the offending global, if any.
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "global" in ln]
        detail = f" ({lines[0][:160]})" if lines else ""
        raise CheckpointError(
            f"refused to load {path}: it is a PyTorch file, but it contains pickled objects that are not "
            f"plain tensors/data and could run code{detail}; only load checkpoints written by "
            f"pneumonia_cam from a source you trust"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad records, I/O: all one message
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is a PyTorch file that is truncated or corrupt "
            f"({type(exc).__name__}); re-run training or copy the file again"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {path} has no 'model' state dict; expected a best.pt/last.pt written by "
            f"python -m pneumonia_cam.train"
        )
    return payload


def resolve_run_checkpoint(path: str | os.PathLike) -> tuple[Path, str | None]:
    """The checkpoint a user means: a file as given, or the ``best.pt`` of a run folder.

    Returns:
        ``(checkpoint path, note)``; the note (``"using runs/demo/best.pt, the run's best weights"``)
            is ``None`` when ``path`` was used as given.

    Raises:
        CheckpointError: a folder without ``best.pt``.
    """
    path = Path(path)
    if not path.is_dir():
        return path, None
    best = path / "best.pt"
    if best.is_file():
        return best, f"{path} is a run folder: using {best}, the run's best weights"
    raise CheckpointError(f"{path} is a folder without a best.pt; pass a run folder written by "
                          f"python -m pneumonia_cam.train (e.g. runs/demo) or a checkpoint file")
