"""Mistake: undo Normalize in the wrong order, (x + mu) * sigma, and without clipping to [0, 1]."""

import torch

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "denormalize"
CAUGHT_BY = ["test_overlay.py::test_denormalize_by_hand_batched_and_clipped"]


def denormalize(x, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):  # noqa: F811
    m = torch.as_tensor(mean, dtype=x.dtype).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(3, 1, 1)
    return (x + m) * s
