"""Mistake: align_corners=True always (the article's geometry): the upsampled map's mean is no longer the logit's."""

import torch.nn.functional as F

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "upsample"
CAUGHT_BY = ["test_zoom.py::test_two_by_two_by_hand", "test_zoom.py::test_half_pixel_keeps_the_mean_the_article_zoom_does_not",
             "test_zoom.py::test_upsampled_cam_still_averages_to_logit_minus_bias"]


def upsample(cams, size, align_corners=False):  # noqa: F811
    if cams.ndim not in (2, 3):
        raise ValueError("cams must be (B, h, w) or (h, w)")
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = cams.reshape(-1, 1, *cams.shape[-2:])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True).view(*cams.shape[:-2], *size)
