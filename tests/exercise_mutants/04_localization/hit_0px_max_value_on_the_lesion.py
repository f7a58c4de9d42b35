"""Mistake: a hit when the map reaches its maximum value somewhere on the lesion, instead of looking
its one peak up in the mask: a flat map (every pixel a maximum) then hits everywhere."""

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
    return bool(saliency[np.asarray(mask, dtype=bool)].max() == saliency.max())
