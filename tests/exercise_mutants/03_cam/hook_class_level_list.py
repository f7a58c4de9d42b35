"""Mistake (the article's): features = [] on the class, appended on every pass: shared by all instances."""

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "LayerActivations"
CAUGHT_BY = ["test_hook.py::test_features_are_per_instance_replaced_and_detached"]


class LayerActivations:  # noqa: F811
    features = []

    def __init__(self, layer):
        self.handle = layer.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, inputs, output):
        self.features.append(output.detach())

    def remove(self):
        self.handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()
