"""Reading chest X-ray folders robustly: the ImageFolder the article uses, hardened for real archives.

The article reads ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with
``torchvision.datasets.ImageFolder``. Real folders hold more than that, so :class:`ChestXrayFolder` and
:func:`load_image` add a policy for everything else:

* *Cannot be an image* (hidden files, ``.DS_Store``, ``__MACOSX/``, non-image extensions): skipped when
  the folder is scanned, counted in one warning (the Kaggle archive itself ships such junk).
* *Looks like an image but does not decode* (empty, truncated, random bytes, DICOM, a decompression
  bomb): :func:`load_image` raises :class:`BadImageError` naming the file and the fix;
  :class:`ChestXrayFolder` decodes every file once when built and drops the bad ones with one warning
  (``strict=True``: one :class:`DataError` instead).
* *Decodes, in an unusual form* (16-bit, palette, RGBA, CMYK, tiny or extreme aspect): converted to
  8-bit RGB by :func:`load_image`.
* *Structural* (missing folder, wrong or empty class folders): one-line :class:`DataError`.

Grayscale is replicated to three channels (PIL's ``convert("RGB")``), so each ImageNet first-layer
filter $W \\in \\mathbb{R}^{3 \\times 7 \\times 7}$ acts on the gray image $I$ as $\\sum_c W_c * I$.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from pneumonia_cam import CLASSES


class DataError(Exception):
    """A user-facing problem with the data folders; the message is one line naming path and fix."""


class BadImageError(ValueError):
    """An image file that cannot be decoded (empty, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = "re-export it as PNG or JPEG, or delete it"):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason}); fix: {fix}")


# ---------------------------------------------------------------------------------- image loading
def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float gray -> 8-bit gray, scaled by the data's bit depth.

    PIL's own ``convert("L")`` clips every value above 255 to white, which turns a 16-bit X-ray into a
    white sheet. We scale by the smallest common bit depth that holds the maximum (8, 10, 12, 14 or 16
    bits, so a 12-bit detector stored in 16 bits keeps its exposure) and never clip.
    """
    a = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and a.max(initial=0) <= 1.0:
        full = 1.0  # float images already in [0, 1]
    else:
        bits = next((b for b in (8, 10, 12, 14, 16, 32) if a.max(initial=0) < 2**b), 32)
        full = 2.0**bits - 1
    return Image.fromarray(np.round(np.clip(a, 0, None) / full * 255).astype(np.uint8), "L")


def draft_jpeg(img: Image.Image, min_side: int) -> int:
    """Ask the JPEG decoder for a reduced-size decode whose both sides are still >= ``min_side``.

    A JPEG stores 8x8 blocks of DCT coefficients. libjpeg can run a smaller inverse DCT on each
    block (4x4, 2x2 or 1x1 of the lowest frequencies) and so decode directly at 1/2, 1/4 or 1/8 of
    the size: the entropy decoding is unchanged, but the inverse DCT, the colour conversion and
    every later step (``convert("RGB")``, the ``Resize``) touch up to 64x fewer pixels. PIL's
    ``Image.draft`` picks the largest such factor $s \\in \\{1, 2, 4, 8\\}$ with
    $s \\le \\lfloor W / m \\rfloor$ and $s \\le \\lfloor H / m \\rfloor$, so both sides stay at least
    $m$ = ``min_side``. With $m$ = the network input size, the transforms' ``Resize`` still
    *shrinks* (never enlarges) the decoded image; what changes is only the low-pass filter in front
    of the final resampling (the DCT's own instead of PIL's), and ``tests/test_precision.py`` checks that
    the 224 px tensors stay close to those of the full decode. A Kaggle scan of 2,000-2,900 px is
    decoded at 1/8 (250-360 px) for 224 px inputs.

    Must be called after ``Image.open`` and before the pixels are loaded; a no-op for any format but
    JPEG (and MPO, multi-picture JPEG) and for images smaller than ``2 * min_side``.

    Args:
        img: a freshly opened, not yet loaded image.
        min_side: the smallest side length the decoded image may have.

    Returns:
        The reduction factor $s$ applied: 1, 2, 4 or 8 (1 when nothing changed).
    """
    if img.format not in ("JPEG", "MPO") or min_side < 1:
        return 1
    full_width = img.size[0]
    # Keep the mode: only the size may change. PIL answers (mode, box) with box = the full image's
    # extent in reduced pixels, (0, 0, W / s, H / s); None when it cannot draft (e.g. progressive
    # files with several tiles).
    result = img.draft(img.mode, (min_side, min_side))
    return 1 if result is None else round(full_width / result[1][2])


def _reason(path: str | os.PathLike, e: Exception) -> str:
    """A short, one-line reason for a decoding failure."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        return "empty file"
    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    return (str(e) or type(e).__name__).splitlines()[0]


def load_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open any image the data set may hold and return it as 8-bit RGB (the ImageFolder loader).

    Grayscale is replicated to three channels (see the module docstring). Images with transparency
    are composited on black: transparent pixels carry no exposure, and black is "no attenuation" on a
    radiograph. CMYK and palette images use PIL's conversions.

    Args:
        path: the image file.
        draft_size: if given, let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while both sides
            stay >= ``draft_size`` px (see :func:`draft_jpeg`; no effect on other formats).

    Raises:
        BadImageError: empty, truncated, missing or non-image files; DICOM files (with the fix
            "convert it first"); images over PIL's decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        head = b""  # Image.open below reports it
    if head[128:132] == b"DICM":  # DICOM: 128-byte preamble + magic; PIL cannot decode it
        raise BadImageError(path, "DICOM file", "convert it to PNG/JPEG first (e.g. with pydicom or dcmj2pnm)")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are a bad image here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(path, f"decompression bomb guard: {str(e).splitlines()[0]}",
                            "shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(path, _reason(path, e)) from None
    try:
        with img:
            if draft_size is not None:
                draft_jpeg(img, draft_size)
            img.load()  # decode now, inside the try: truncated files fail here, not in a worker
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(path, _reason(path, e)) from None


# -------------------------------------------------------------------------------------- datasets
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")


def _is_junk(name: str) -> bool:
    """macOS metadata and hidden entries: ``.DS_Store``, ``._foo.jpeg``, ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


class ChestXrayFolder(ImageFolder):
    """``ImageFolder`` over ``root/{NORMAL,PNEUMONIA}``: skips junk and bad images, asserts the class order.

    Skipped entries (hidden files, anything under ``__MACOSX/``, non-image extensions) are counted in
    ``self.skipped`` and reported in one warning. Every remaining file is then decoded once with
    ``loader`` (JPEGs at draft scale, see :func:`draft_jpeg`): files that fail are collected in
    ``self.bad`` as ``(path, reason)`` and dropped with one warning naming each of them, or, with
    ``strict=True``, raise one :class:`DataError` listing them. A file that breaks *after* this check
    (changed on disk during a run) is skipped in ``__getitem__``: a warning names it and the next
    sample stands in, so an epoch never dies on one image (``strict``: a ``DataError`` instead).
    """

    def __init__(self, root: str | os.PathLike, transform=None, loader=load_image, strict: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found; fix: point to a folder in Kaggle layout (NORMAL/ PNEUMONIA/)")
        self.skipped: list[str] = []
        self.bad: list[tuple[str, str]] = []
        self.strict = strict

        def is_valid_file(path: str) -> bool:
            parts = Path(path).relative_to(root).parts
            # DICOM counts as an image here, so that it is reported with "convert it first" below.
            ok = not any(_is_junk(p) for p in parts) and path.lower().endswith(IMG_EXTENSIONS + DICOM_EXTENSIONS)
            if not ok:
                self.skipped.append(path)
            return ok

        try:
            super().__init__(str(root), transform=transform, loader=loader, is_valid_file=is_valid_file)
        except FileNotFoundError as e:  # torchvision: a class folder without any image
            raise DataError(f"{root}: {str(e).splitlines()[0]}; fix: put images in NORMAL/ and PNEUMONIA/") from None
        if self.skipped:
            examples = ", ".join(self.skipped[:3])
            warnings.warn(f"{root}: skipped {len(self.skipped)} hidden or non-image files (e.g. {examples})", stacklevel=2)

        good = []
        for path, target in self.samples:  # decode each file once, now, rather than fail mid-epoch
            try:
                self.loader(path)
                good.append((path, target))
            except BadImageError as e:
                self.bad.append((path, e.reason))
        if self.bad:
            listing = "; ".join(f"{p} ({reason})" for p, reason in self.bad)
            if strict:
                raise DataError(f"{root}: {len(self.bad)} image(s) cannot be read: {listing}; fix: re-export them as "
                                "PNG/JPEG (convert DICOM first) or delete them, or drop --strict-data to skip them")
            warnings.warn(f"{root}: skipped {len(self.bad)} unreadable image(s): {listing}", stacklevel=2)
            self.samples = self.imgs = good
            self.targets = [t for _, t in good]
            for c, i in self.class_to_idx.items():
                if i not in self.targets:
                    raise DataError(f"{root / c}: no readable image left; fix: put PNG/JPEG images in it")

    def keep_in_memory(self, max_bytes: int) -> None:
        """Decode each image once: keep it, after the transform's leading deterministic steps
        (``Resize``, ``CenterCrop``), for every later epoch, up to ``max_bytes`` of pixels.

        The random steps (rotation, flip) and the tensor conversion still run on every access, so
        the samples are exactly those without the memory. The memory belongs to this dataset and its
        transform: a copy (:func:`pneumonia_cam.support.splits.with_transform`) starts empty, and so
        does each DataLoader worker process.
        """
        self._memory = _Memory(max_bytes)

    def __copy__(self):
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        if getattr(self, "_memory", None) is not None:
            view._memory = _Memory(self._memory.max_bytes)
        return view

    def _load(self, i: int):
        """``(image, target)`` with the transforms applied, through the memory when one is kept."""
        memory = getattr(self, "_memory", None)
        if memory is None:
            return super().__getitem__(i)
        path, target = self.samples[i]
        img = memory.get(i, self.transform)
        if img is None:
            img = self.loader(path)
            for step in memory.fixed:
                img = step(img)
            memory.put(i, self.transform, img)
        for step in memory.rest:
            img = step(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __getitem__(self, index: int):
        """The sample at ``index``; if its file became unreadable since the scan, the next good one."""
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            try:
                return self._load(i)
            except BadImageError as e:
                if self.strict:
                    raise DataError(str(e)) from None  # DataError(msg) survives DataLoader worker re-raising
                self.bad.append((e.path, e.reason))
                warnings.warn(f"skipped unreadable image {e}; using the next sample instead", stacklevel=2)
        raise DataError(f"{self.root}: no readable image left; fix: check the data folder")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Class folders minus junk; raises DataError unless they are exactly NORMAL and PNEUMONIA."""
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
        self.skipped.extend(e.path for e in entries if _is_junk(e.name) or not e.is_dir())
        classes = [e.name for e in entries if e.is_dir() and not _is_junk(e.name)]
        if classes != list(CLASSES):
            raise DataError(
                f"{directory}: class folders found: {classes}; expected {list(CLASSES)} "
                "(NORMAL=0, PNEUMONIA=1); fix: point to a split folder in Kaggle layout"
            )
        return classes, {c: i for i, c in enumerate(classes)}


# ------------------------------------------------------------------------------ images in memory
class _Memory:
    """Images by sample index for one transform, up to ``max_bytes`` of pixels (then no more are added)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used, self.images, self.transform = int(max_bytes), 0, {}, None
        self.fixed: list = []  # the transform's deterministic leading steps, whose output is kept
        self.rest: list = []  # the steps run on every access

    def get(self, i: int, transform):
        if transform is not self.transform:  # the transform was replaced: what is kept no longer applies
            self.images, self.used, self.transform = {}, 0, transform
            self.fixed, self.rest = _deterministic_prefix(transform)
        return self.images.get(i)

    def put(self, i: int, transform, img) -> None:
        size = img.width * img.height * len(img.getbands()) if isinstance(img, Image.Image) else None
        if size is not None and self.used + size <= self.max_bytes and transform is self.transform:
            self.images[i], self.used = img, self.used + size


def _deterministic_prefix(transform) -> tuple[list, list]:
    """Split a transform into its leading deterministic PIL steps and the rest."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else ([transform] if transform else [])
    n = 0
    while n < len(steps) and type(steps[n]) in (T.Resize, T.CenterCrop):
        n += 1
    return steps[:n], steps[n:]


def keep_in_memory(dataset, max_bytes: int) -> None:
    """:meth:`ChestXrayFolder.keep_in_memory` for the folder under ``dataset`` (through ``Subset`` views)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if isinstance(dataset, ChestXrayFolder) and max_bytes > 0:
        dataset.keep_in_memory(max_bytes)
