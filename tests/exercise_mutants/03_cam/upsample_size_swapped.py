"""Mistake: size read as (W, H), the PIL order, instead of PyTorch's (H, W)."""

import torch.nn.functional as F

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "upsample"
CAUGHT_BY = ["test_zoom.py::test_output_shapes"]


def upsample(cams, size, align_corners=False):  # noqa: F811
    if cams.ndim not in (2, 3):
        raise ValueError("cams must be (B, h, w) or (h, w)")
    size = (size, size) if isinstance(size, int) else (size[1], size[0])
    x = cams.reshape(-1, 1, *cams.shape[-2:])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners).view(*cams.shape[:-2], *size)
