"""Mistake: the pointing game with its usual 15 px tolerance reported as the hit at 0 px."""

import numpy as np
from scipy import ndimage

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "hit_0px"
CAUGHT_BY = ["test_metrics.py::test_hit_at_0px_needs_the_maximum_on_the_lesion_itself",
             "test_metrics.py::test_the_15px_tolerance_is_half_a_7x7_cell_at_224px"]


def hit_0px(saliency, mask):  # noqa: F811
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    return bool(ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool))[y, x] <= 15)
