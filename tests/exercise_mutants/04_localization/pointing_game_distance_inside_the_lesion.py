"""Mistake: the distance transform of the mask itself, the distance to the nearest pixel *outside*
the lesion, which is 0 everywhere off the lesion: every peak off the lesion is a hit."""

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
CAUGHT_BY = ["test_metrics.py::test_hit_at_0px_needs_the_maximum_on_the_lesion_itself",
             "test_metrics.py::test_the_distance_is_euclidean_to_the_nearest_lesion_pixel"]


def pointing_game(saliency, mask, tolerance=15.0):  # noqa: F811
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    return bool(ndimage.distance_transform_edt(np.asarray(mask, dtype=bool))[y, x] <= tolerance)
