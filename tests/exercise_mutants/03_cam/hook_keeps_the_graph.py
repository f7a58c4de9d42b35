"""Mistake: store the output without .detach(): the features keep the autograd graph (and its memory) alive."""

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "LayerActivations"
CAUGHT_BY = ["test_hook.py::test_features_are_per_instance_replaced_and_detached"]


class LayerActivations:  # noqa: F811
    def __init__(self, layer):
        self.layer, self.features, self.handle = layer, None, None
        self.__enter__()

    def hook(self, module, inputs, output):
        self.features = output

    def remove(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def __enter__(self):
        if self.handle is None:
            self.handle = self.layer.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc_info):
        self.remove()
