"""Mistake: the raw map's sums, negative cells included: they shrink the total, and the share on the
lesion grows past what the positive mass puts there (even past 1)."""

import numpy as np

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "energy_pointing_game"
CAUGHT_BY = ["test_metrics.py::test_energy_of_hand_made_maps"]


def energy_pointing_game(saliency, mask):  # noqa: F811
    mask = np.asarray(mask, dtype=bool)
    total = float(saliency.sum())
    return float(saliency[mask].sum()) / total if total > 0 else 0.0
