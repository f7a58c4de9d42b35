"""Mistake: ndimage.distance_transform_cdt, whose default metric is the chessboard distance
max(|dy|, |dx|), not the Euclidean one: a diagonal peak 15.6 px away counts as 11."""

import numpy as np
from scipy import ndimage

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "pointing_game"
CAUGHT_BY = ["test_metrics.py::test_the_distance_is_euclidean_to_the_nearest_lesion_pixel"]


def pointing_game(saliency, mask, tolerance=15.0):  # noqa: F811
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    return bool(ndimage.distance_transform_cdt(~np.asarray(mask, dtype=bool))[y, x] <= tolerance)
