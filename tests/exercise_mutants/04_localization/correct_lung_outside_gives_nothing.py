"""Mistake: a lesion that touches no lung pixel gets an all-zero map instead of both lungs."""

import numpy as np
from scipy import ndimage

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "correct_lung_map"
CAUGHT_BY = ["test_baselines.py::test_correct_lung_knows_the_side_and_nothing_else"]


def correct_lung_map(lung_mask, lesion_mask):  # noqa: F811
    lung, lesion = np.asarray(lung_mask, dtype=bool), np.asarray(lesion_mask, dtype=bool)
    if not lung.any() or lung.shape != lesion.shape:
        raise ValueError("empty lung mask or masks of different shapes")
    labels, n = ndimage.label(lung, structure=np.ones((3, 3)))
    overlap = np.bincount(labels[lesion], minlength=n + 1)[1:]
    if overlap.max(initial=0) == 0:
        return np.zeros(lung.shape)
    return (labels == int(np.argmax(overlap)) + 1).astype(np.float64)
