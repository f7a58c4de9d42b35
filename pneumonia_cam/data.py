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
* **Validation.** Kaggle's val split has 16 images (one image = 6.25 accuracy points), too few to
  select a model. ``make_datasets(val_from_train=0.1)`` carves a validation set out of train instead:
  stratified by class and *patient-aware* (file names carry the patient: ``person1010_virus_1695``),
  so no patient's images land on both sides of the split.
"""

from __future__ import annotations

import copy
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

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason}); fix: re-export it as PNG or JPEG, or delete it")


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


def load_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open any image the data set may hold and return it as 8-bit RGB (the ImageFolder loader).

    Grayscale is replicated to three channels (see the module docstring). Images with transparency
    are composited on black: transparent pixels carry no exposure, and black is "no attenuation" on a
    radiograph. CMYK and palette images use PIL's conversions.

    Args:
        path: the image file.
        draft_size: if given, let the JPEG decoder downscale by a power of two to no less than
            ``draft_size`` px a side (much faster on 2,000 px Kaggle scans; no effect on PNG).

    Raises:
        BadImageError: empty, truncated, missing or non-image files.
    """
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("L" if img.mode == "L" else "RGB", (draft_size, draft_size))
            img.load()  # decode now, inside the try: truncated files fail here, not in a worker
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                img = _to_8bit(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "empty file" if Path(path).is_file() and Path(path).stat().st_size == 0 else str(e) or type(e).__name__
        raise BadImageError(path, reason.splitlines()[0]) from None


# -------------------------------------------------------------------------------------- datasets
def _is_junk(name: str) -> bool:
    """macOS metadata and hidden entries: ``.DS_Store``, ``._foo.jpeg``, ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


class ChestXrayFolder(ImageFolder):
    """``ImageFolder`` over ``root/{NORMAL,PNEUMONIA}`` that skips junk and asserts the class order.

    Skipped entries (hidden files, anything under ``__MACOSX/``, non-image extensions) are counted in
    ``self.skipped`` and reported in one warning.
    """

    def __init__(self, root: str | os.PathLike, transform=None, loader=load_image):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found; fix: point to a folder in Kaggle layout (NORMAL/ PNEUMONIA/)")
        self.skipped: list[str] = []

        def is_valid_file(path: str) -> bool:
            parts = Path(path).relative_to(root).parts
            ok = not any(_is_junk(p) for p in parts) and path.lower().endswith(IMG_EXTENSIONS)
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
    augment: bool = True,
) -> dict[str, Dataset]:
    """ImageFolder datasets for the three splits of a Kaggle-layout root.

    Args:
        root: folder holding ``train/``, ``val/``, ``test/`` (``val/`` unused with ``val_from_train``).
        size: the network's input size (224 in the article).
        val_from_train: if set, a patient-aware stratified share of train becomes val (with eval
            transforms) and ``root/val`` is ignored.
        seed: seed of that split.
        augment: False gives train the eval pipeline (deterministic inputs, e.g. for tests).

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
    out: dict[str, Dataset] = {"train": ChestXrayFolder(root / "train", transform=train_tf)}
    if val_from_train:
        # Two views of the same scanned samples: augmenting transforms for train, eval ones for val.
        full = out["train"]
        eval_view = copy.copy(full)  # shares the sample list; only the transform differs
        eval_view.transform = tf["val"]
        eval_view.transforms = StandardTransform(tf["val"])  # what repr() shows
        train_idx, val_idx = patient_split(full.samples, val_from_train, seed)
        out["train"], out["val"] = SplitView(full, train_idx), SplitView(eval_view, val_idx)
    else:
        out["val"] = ChestXrayFolder(root / "val", transform=tf["val"])
    out["test"] = ChestXrayFolder(root / "test", transform=tf["test"])
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
