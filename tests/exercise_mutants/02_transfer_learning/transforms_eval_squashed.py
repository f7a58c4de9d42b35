"""Mistake: one Resize((s, s)) for every pipeline: the eval pipelines squash instead of Resize(s) + CenterCrop."""

from torchvision import transforms

from pneumonia_cam.steps.data import IMAGENET_MEAN, IMAGENET_STD
from pneumonia_cam.steps.fit import evaluate, train_one_epoch  # noqa: F401
from pneumonia_cam.steps.model import replace_head, train_mode  # noqa: F401

LESSON = "02_transfer_learning"
EXERCISE = "make_transforms"
CAUGHT_BY = ["test_data_step.py::test_the_three_pipelines_are_the_articles"]


def make_transforms(size=224):
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    ev = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), normalize])
    train = transforms.Compose([transforms.Resize((size, size)), transforms.RandomRotation(20),
                                transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    return {"train": train, "val": ev, "test": ev}
