"""Mistake: every BatchNorm layer to eval mode, frozen or not: an unfrozen model's BatchNorm never learns."""

from torch import nn

from pneumonia_cam.steps.data import make_transforms  # noqa: F401
from pneumonia_cam.steps.fit import evaluate, train_one_epoch  # noqa: F401
from pneumonia_cam.steps.model import replace_head  # noqa: F401

LESSON = "02_transfer_learning"
EXERCISE = "train_mode"
CAUGHT_BY = ["test_transfer_learning.py::test_train_mode_trains_batchnorm_of_an_unfrozen_model"]


def train_mode(model):
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model
