"""Mistake: a bare Linear head: the model returns logits, but the loss (NLLLoss) expects log-probabilities."""

from torch import nn

from pneumonia_cam.steps.data import make_transforms  # noqa: F401
from pneumonia_cam.steps.fit import evaluate, train_one_epoch  # noqa: F401
from pneumonia_cam.steps.model import train_mode  # noqa: F401

LESSON = "02_transfer_learning"
EXERCISE = "replace_head"
CAUGHT_BY = ["test_transfer_learning.py::test_head_is_linear_then_log_softmax"]


def replace_head(model, num_classes=2, freeze_backbone=False):
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    model.fc = nn.Sequential(nn.Linear(model.fc.in_features, num_classes))
    return model
