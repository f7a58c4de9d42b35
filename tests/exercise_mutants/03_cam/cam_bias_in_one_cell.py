"""Mistake: the bias added to the sum once (at one cell) instead of to every cell: the mean is off by b (1 - 1/hw)."""

import torch

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "class_activation_map"
CAUGHT_BY = ["test_weighted_sum.py::test_hand_computed_two_channel_2x2",
             "test_weighted_sum.py::test_cam_mean_plus_bias_is_the_logit_for_every_class_and_image"]


def class_activation_map(features, weight, class_idx=None, bias=None):  # noqa: F811
    B = features.shape[0]
    maps = torch.einsum("bkhw,ck->bchw", features, weight.detach().to(features)).clone()
    if bias is not None:
        maps[:, :, 0, 0] += bias.detach().to(features)
    if class_idx is None:
        class_idx = maps.mean((2, 3)).argmax(1)
    idx = torch.as_tensor(class_idx).long().expand(B)
    return maps[torch.arange(B), idx]
