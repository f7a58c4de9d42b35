"""Mistake: no guard for a map without positive mass: 0 / 0 (nan, or a ZeroDivisionError)."""

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
    s = np.clip(saliency, 0, None)
    with np.errstate(invalid="ignore"):
        return float(s[np.asarray(mask, dtype=bool)].sum() / s.sum())
