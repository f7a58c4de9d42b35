"""Mistake: ToTensor only, no Normalize: pixels in [0, 1] instead of the ImageNet z-scores."""

from torchvision import transforms

from pneumonia_cam.steps.fit import evaluate, train_one_epoch  # noqa: F401
from pneumonia_cam.steps.model import replace_head, train_mode  # noqa: F401

LESSON = "02_transfer_learning"
EXERCISE = "make_transforms"
CAUGHT_BY = ["test_data_step.py::test_normalize_maps_a_constant_image_to_its_per_channel_z_score",
             "test_data_step.py::test_the_three_pipelines_are_the_articles"]


def make_transforms(size=224):
    ev = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    train = transforms.Compose([transforms.Resize((size, size)), transforms.RandomRotation(20),
                                transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    return {"train": train, "val": ev, "test": ev}
