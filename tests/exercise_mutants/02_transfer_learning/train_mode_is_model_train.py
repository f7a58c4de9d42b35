"""Mistake (the article's): plain model.train(): frozen BatchNorm layers update their running statistics."""

from pneumonia_cam.steps.data import make_transforms  # noqa: F401
from pneumonia_cam.steps.fit import evaluate, train_one_epoch  # noqa: F401
from pneumonia_cam.steps.model import replace_head  # noqa: F401

LESSON = "02_transfer_learning"
EXERCISE = "train_mode"
CAUGHT_BY = ["test_transfer_learning.py::test_frozen_backbone_stays_frozen_with_train_mode"]


def train_mode(model):
    return model.train()
