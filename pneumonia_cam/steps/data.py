"""The article's "Load and preprocess our data" step: transforms, ImageFolder datasets, DataLoaders.

The article reads the Kaggle folders ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with
``ImageFolder``, three ``transforms.Compose`` pipelines and one ``DataLoader`` per split. So does this
module, in three functions: :func:`make_transforms`, :func:`make_datasets`, :func:`make_loaders`.
Inputs are normalized with the ImageNet statistics, $\\hat{x}_c = (x_c - \\mu_c) / \\sigma_c$, because
the pretrained weights were trained on inputs normalized that way.

Reading real folders robustly (junk files, images that do not decode, 16-bit scans) is
:mod:`pneumonia_cam.support.images`; the patient-aware validation split is
:mod:`pneumonia_cam.support.splits`. ImageFolder numbers classes by sorted folder name, so
NORMAL = 0 and PNEUMONIA = 1 (:data:`pneumonia_cam.CLASSES`).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from pneumonia_cam import SPLITS
from pneumonia_cam.support.images import ChestXrayFolder, DataError, load_image
from pneumonia_cam.support.splits import SplitView, patient_split, with_transform

# The statistics the ImageNet weights were trained with: inputs must be normalized the same way.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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


def make_datasets(
    root: str | os.PathLike, size: int = 224, val_from_train: float | None = None, seed: int = 0,
    augment: bool = True, strict: bool = False,
) -> dict[str, Dataset]:
    """ImageFolder datasets for the three splits of a Kaggle-layout root.

    Args:
        root: folder holding ``train/``, ``val/``, ``test/`` (``val/`` unused with ``val_from_train``).
        size: the network's input size (224 in the article); JPEGs are decoded at reduced scale
            down to this size (:func:`pneumonia_cam.support.images.draft_jpeg`).
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
    # shrinks, from fewer decoded pixels. A partial, not a lambda: DataLoader workers pickle the loader.
    loader = functools.partial(load_image, draft_size=size)
    out: dict[str, Dataset] = {
        "train": ChestXrayFolder(root / "train", transform=train_tf, loader=loader, strict=strict)}
    if val_from_train:
        # Two views of the same scanned samples: augmenting transforms for train, eval ones for val.
        full = out["train"]
        train_idx, val_idx = patient_split(full.samples, val_from_train, seed)
        out["train"], out["val"] = SplitView(full, train_idx), SplitView(with_transform(full, tf["val"]), val_idx)
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

    Args:
        datasets: ``{split: dataset}``, e.g. from :func:`make_datasets`.
        batch_size: images per batch.
        num_workers: worker processes per loader (``None``: the choice above).
        device: where the batches go (decides ``pin_memory``).
        seed: seed of the training loader's shuffling generator.

    Returns:
        ``{split: DataLoader}``, the same keys as ``datasets``.
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
