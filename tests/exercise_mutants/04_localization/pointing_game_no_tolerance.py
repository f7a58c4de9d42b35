"""Mistake: the tolerance ignored: a hit only when the maximum is on the lesion itself (the 0 px hit)."""

import numpy as np

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "pointing_game"
CAUGHT_BY = ["test_metrics.py::test_hit_at_0px_needs_the_maximum_on_the_lesion_itself",
             "test_metrics.py::test_the_15px_tolerance_is_half_a_7x7_cell_at_224px",
             "test_metrics.py::test_the_distance_is_euclidean_to_the_nearest_lesion_pixel"]


def pointing_game(saliency, mask, tolerance=15.0):  # noqa: F811
    return bool(np.asarray(mask, dtype=bool).flat[int(np.argmax(saliency))])
