"""Validation split and views: patient-aware carving of a validation set out of train.

Kaggle's ``val/`` holds 16 images (one image = 6.25 accuracy points), too few to select a model.
:func:`patient_split` carves a stratified share of train instead, keeping every patient's images on
one side (file names carry the patient: ``person1010_virus_1695``); :class:`SplitView` is the subset
that still answers ``samples`` and ``targets`` like an ImageFolder, and :func:`with_transform` reads
the same files through another transform (the carved val split sees train's images without
augmentation).
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision.datasets.vision import StandardTransform


class SplitView(Subset):
    """A ``Subset`` that still answers ``classes``, ``samples`` and ``targets`` like an ImageFolder."""

    dataset: Dataset

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


def with_transform(dataset: Dataset, transform: Callable | None) -> Dataset:
    """A shallow copy of ``dataset`` that reads the same files through another ``transform``.

    Works for torchvision folder datasets and any nesting of ``Subset`` views over them (e.g. a
    :class:`SplitView`); the sample list is shared, not copied.

    Raises:
        TypeError: the dataset has no ``transform`` attribute to replace.
    """
    if isinstance(dataset, Subset):
        view = copy.copy(dataset)
        view.dataset = with_transform(dataset.dataset, transform)
        return view
    if not hasattr(dataset, "transform"):
        raise TypeError(f"cannot change the transform of a {type(dataset).__name__}")
    view = copy.copy(dataset)
    view.transform = transform
    if hasattr(view, "transforms"):  # what torchvision applies and repr() shows
        view.transforms = StandardTransform(transform, getattr(view, "target_transform", None))
    return view


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
