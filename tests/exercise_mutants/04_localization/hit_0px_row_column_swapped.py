"""Mistake: the peak's (row, column) read as (x, y) and looked up transposed."""

import numpy as np

from pneumonia_cam.extensions.localization import (  # noqa: F401
    correct_lung_map,
    energy_pointing_game,
    hit_0px,
    pointing_game,
)

LESSON = "04_localization"
EXERCISE = "hit_0px"
CAUGHT_BY = ["test_metrics.py::test_hit_at_0px_needs_the_maximum_on_the_lesion_itself"]


def hit_0px(saliency, mask):  # noqa: F811
    x, y = np.unravel_index(np.argmax(saliency), saliency.shape)
    return bool(np.asarray(mask, dtype=bool)[y, x])
