"""Mistake: the article's one-image code in a batch: every image gets the first image's features."""

import torch

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "class_activation_map"
CAUGHT_BY = ["test_weighted_sum.py::test_batched_torch_cam_equals_article_numpy_per_image",
             "test_weighted_sum.py::test_cam_mean_plus_bias_is_the_logit_for_every_class_and_image"]


def class_activation_map(features, weight, class_idx=None, bias=None):  # noqa: F811
    B = features.shape[0]
    weight = weight.detach().to(features)
    first = torch.einsum("khw,ck->chw", features[0], weight)  # (C, h, w)
    if bias is not None:
        first = first + bias.detach().to(features).view(-1, 1, 1)
    if class_idx is None:
        class_idx = first.mean((1, 2)).argmax()
    idx = torch.as_tensor(class_idx).long().expand(B)
    return first[idx]  # (B, h, w), all from image 0
