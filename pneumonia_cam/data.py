"""The article's "Load and preprocess our data" section: transforms, ImageFolder datasets, loaders.

The tutorial reads the Kaggle folders ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with
``torchvision.datasets.ImageFolder`` and three ``transforms.Compose`` pipelines, then wraps them in
``DataLoader``s. This module does the same, with what the article left implicit made explicit:

* **Three channels.** X-rays are grayscale, ImageNet ResNets expect RGB. ``load_image`` replicates the
  gray channel three times (PIL's ``convert("RGB")``), so each first-layer filter $W \\in
  \\mathbb{R}^{3 \\times 7 \\times 7}$ sees $\\sum_c W_c * I$: the pretrained filter acts as the sum of
  its three colour kernels on the gray image, and no weights need changing.
* **Class order.** ImageFolder numbers classes by sorted folder name, so NORMAL = 0 and PNEUMONIA = 1.
  The CAM reads row 1 of the head's weight as "pneumonia", so the order is asserted, not assumed.
* **Junk.** The Kaggle archive carries ``.DS_Store`` and ``__MACOSX/`` (AppleDouble ``._*`` files that
  *look* like JPEGs by extension). They are skipped and counted in one warning per dataset.
* **Bad inputs** (``tests/test_bad_inputs.py`` feeds a corpus of them through the datasets, the train
  command and the cam command). The policy:

    - *Cannot be an image* (hidden files, ``.DS_Store``, ``__MACOSX/``, text and other non-image
      extensions): skipped when the folder is scanned, counted in one warning. Always, even with
      ``--strict-data`` (the Kaggle archive itself ships such junk).
    - *Looks like an image but does not decode* (empty, truncated, random bytes named ``.jpeg``,
      DICOM, an image over PIL's decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``):
      ``load_image`` raises ``BadImageError`` naming the file and the fix (DICOM: "convert it to
      PNG/JPEG first"). ``ChestXrayFolder`` decodes every file once when it is built (JPEGs at draft
      scale: ~5 ms for a 2000x1700 px, 370 KB scan, so ~30 s for all 5,856 Kaggle images on one
      core, a fraction of one training epoch) and drops the bad ones with one warning naming each,
      so a run never dies mid-epoch on one image. ``strict=True`` (``--strict-data``) makes them one
      ``DataError`` before training instead. A file that breaks during a run is skipped in
      ``__getitem__`` with a warning (the next sample stands in).
    - *Decodes, in an unusual form* (16-bit, palette, RGBA, CMYK, 1x1, 4000x20): loaded, see
      ``load_image``.
    - *Structural* (missing path, missing split, no class folders, empty class folder, wrong class
      names): one-line ``DataError`` naming the path and the fix; the commands exit with code 2.

* **Validation.** Kaggle's val split has 16 images (one image = 6.25 accuracy points), too few to
  select a model. ``make_datasets(val_from_train=0.1)`` carves a validation set out of train instead:
  stratified by class and *patient-aware* (file names carry the patient: ``person1010_virus_1695``),
  so no patient's images land on both sides of the split.
* **Decoding speed.** Kaggle scans reach ~2,900 px a side and are shrunk to 224 px anyway. The
  datasets let libjpeg decode them directly at 1/2, 1/4 or 1/8 scale, never below the network's
  input size (:func:`draft_jpeg`), which saves most of the decode and resize work.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import StandardTransform

from pneumonia_cam import CLASSES

# The statistics the ImageNet weights were trained with: inputs must be normalized the same way.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SPLITS: tuple[str, str, str] = ("train", "val", "test")


class DataError(Exception):
    """A user-facing problem with the data folders; the message is one line naming path and fix."""


class BadImageError(ValueError):
    """An image file that cannot be decoded (empty, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str = "re-export it as PNG or JPEG, or delete it"):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason}); fix: {fix}")


# ----------------------------------------------------------------------------------- transforms
def make_transforms(size: int = 224) -> dict[str, transforms.Compose]:
    """The article's three pipelines, with the image size as a parameter.

    ``train`` squashes to a square (``Resize((size, size))`` ignores the aspect ratio), then augments.
    ``val``/``test`` use ``Resize(size)``, which scales the *shorter* side to ``size`` and keeps the
    aspect ratio, then ``CenterCrop(size)``. On square inputs (our phantoms) that crop is a no-op; on
    Kaggle's non-square scans it cuts the longer side, so train and eval see slightly different
    framings. We keep the article's pipelines as written; the lesson tests pin both facts.
    """
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluation = transforms.Compose([
        transforms.Resize(size),
        transforms.CenterCrop(size),
        transforms.ToTensor(),  # (H, W, 3) uint8 -> (3, H, W) float in [0, 1]
        normalize,
    ])
    train = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomRotation(20),  # degrees, uniform in [-20, 20]; corners fill with black
        transforms.RandomHorizontalFlip(),  # note: swaps the heart's side, as the article accepts
        transforms.ToTensor(),
        normalize,
    ])
    return {"train": train, "val": evaluation, "test": copy.deepcopy(evaluation)}


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
    ``loader`` (JPEGs at draft scale, so ~5 ms per Kaggle scan): files that fail are collected in
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

    def __getitem__(self, index: int):
        """The sample at ``index``; if its file became unreadable since the scan, the next good one."""
        for k in range(len(self.samples)):
            i = (index + k) % len(self.samples)
            try:
                return super().__getitem__(i)
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


class SplitView(Subset):
    """A ``Subset`` that still answers ``classes``, ``samples`` and ``targets`` like an ImageFolder."""

    dataset: ChestXrayFolder

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.dataset.class_to_idx

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [self.dataset.samples[i] for i in self.indices]

    @property
    def targets(self) -> list[int]:
        return [self.dataset.targets[i] for i in self.indices]


# --------------------------------------------------------------------------------- patient split
_PERSON = re.compile(r"^(person\d+)_")  # person1010_virus_1695 -> person1010
_IM = re.compile(r"^(.*IM-\d+)-\d+$")  # IM-0115-0001 -> IM-0115, NORMAL2-IM-1427-0001 -> NORMAL2-IM-1427


def patient_id(filename: str | os.PathLike) -> str:
    """The patient a Kaggle file belongs to; any other name is its own patient (its stem)."""
    stem = Path(filename).stem
    m = _PERSON.match(stem) or _IM.match(stem)
    return m.group(1) if m else stem


def patient_split(
    samples_or_paths: Sequence[tuple[str, int]] | Sequence[str | os.PathLike], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) with no patient on both sides, stratified by class.

    Within each class, patients are shuffled (seeded) and moved to val until val holds
    ``round(fraction * n_images_of_class)`` images; it overshoots by less than one patient's images.
    A patient is assigned to the class most of their images carry.

    Args:
        samples_or_paths: ImageFolder ``samples`` ``(path, label)``, or plain paths (the label is
            then the parent folder's name).
        fraction: share of images for val, in (0, 1).
        seed: shuffling seed.

    Returns:
        Sorted train indices and sorted val indices.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    items = [(str(s[0]), s[1]) if isinstance(s, tuple) else (str(s), Path(s).parent.name) for s in samples_or_paths]
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, (path, _) in enumerate(items):
        by_patient[patient_id(path)].append(i)
    strata: dict[object, list[str]] = defaultdict(list)
    for pid in sorted(by_patient):
        label = Counter(items[i][1] for i in by_patient[pid]).most_common(1)[0][0]
        strata[label].append(pid)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted(strata, key=str):
        pids = strata[label]
        target = round(fraction * sum(len(by_patient[p]) for p in pids))
        taken = 0
        for k in rng.permutation(len(pids)):
            if taken >= target:
                break
            val += by_patient[pids[k]]
            taken += len(by_patient[pids[k]])
    val_set = set(val)
    return [i for i in range(len(items)) if i not in val_set], sorted(val_set)


def make_datasets(
    root: str | os.PathLike, size: int = 224, val_from_train: float | None = None, seed: int = 0,
    augment: bool = True, strict: bool = False,
) -> dict[str, Dataset]:
    """ImageFolder datasets for the three splits of a Kaggle-layout root.

    Args:
        root: folder holding ``train/``, ``val/``, ``test/`` (``val/`` unused with ``val_from_train``).
        size: the network's input size (224 in the article); JPEGs are decoded at reduced scale
            down to this size (:func:`draft_jpeg`).
        val_from_train: if set, a patient-aware stratified share of train becomes val (with eval
            transforms) and ``root/val`` is ignored.
        seed: seed of that split.
        augment: False gives train the eval pipeline (deterministic inputs, e.g. for tests).
        strict: unreadable images raise :class:`DataError` instead of being skipped with a warning
            (``--strict-data``; see :class:`ChestXrayFolder`).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; fix: pass the folder holding train/ val/ test/ "
                        "(Kaggle layout), or omit it to use the generated phantoms")
    needed = ("train", "test") if val_from_train else SPLITS
    for split in needed:
        if not (root / split).is_dir():
            raise DataError(f"{root / split}: split folder missing; fix: {root} needs {'/ '.join(needed)}/ "
                            "each with NORMAL/ and PNEUMONIA/")
    tf = make_transforms(size)
    train_tf = tf["train"] if augment else tf["val"]
    # Every pipeline starts with a Resize to `size` (shorter side, or both sides), so a JPEG may be
    # decoded at any reduced scale that keeps both sides >= size (draft_jpeg): the Resize still
    # shrinks, and large Kaggle scans decode several times faster. A partial, not a lambda:
    # DataLoader workers pickle the loader.
    loader = functools.partial(load_image, draft_size=size)
    out: dict[str, Dataset] = {
        "train": ChestXrayFolder(root / "train", transform=train_tf, loader=loader, strict=strict)}
    if val_from_train:
        # Two views of the same scanned samples: augmenting transforms for train, eval ones for val.
        full = out["train"]
        eval_view = copy.copy(full)  # shares the sample list; only the transform differs
        eval_view.transform = tf["val"]
        eval_view.transforms = StandardTransform(tf["val"])  # what repr() shows
        train_idx, val_idx = patient_split(full.samples, val_from_train, seed)
        out["train"], out["val"] = SplitView(full, train_idx), SplitView(eval_view, val_idx)
    else:
        out["val"] = ChestXrayFolder(root / "val", transform=tf["val"], loader=loader, strict=strict)
    out["test"] = ChestXrayFolder(root / "test", transform=tf["test"], loader=loader, strict=strict)
    return out


def make_loaders(
    datasets: dict[str, Dataset], batch_size: int, num_workers: int | None = None, device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, DataLoader]:
    """DataLoaders: only train shuffles, from a seeded generator (which also seeds the workers'
    augmentation RNG, so a run is repeatable for a fixed ``num_workers``).

    ``num_workers=None`` picks ``min(2, cpu_count)``, but 0 for a split of at most two batches, where
    starting worker processes costs more than decoding. Workers persist across epochs (no restart
    cost each epoch); ``pin_memory`` only helps host-to-CUDA copies, so it is on only for CUDA.
    """
    pin = torch.device(device).type == "cuda"
    loaders = {}
    for name, ds in datasets.items():
        workers = num_workers
        if workers is None:
            workers = 0 if len(ds) <= 2 * batch_size else min(2, os.cpu_count() or 1)
        train = name == "train"
        loaders[name] = DataLoader(
            ds, batch_size=batch_size, shuffle=train, generator=torch.Generator().manual_seed(seed) if train else None,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
        )
    return loaders
