"""Mistake: no remove() in __exit__: the hook outlives the with block and runs on every later pass."""

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "LayerActivations"
CAUGHT_BY = ["test_hook.py::test_exactly_one_handle_while_active_and_none_after",
             "test_hook.py::test_hook_removed_even_when_the_forward_pass_fails"]


class LayerActivations:  # noqa: F811
    def __init__(self, layer):
        self.features = None
        self.handle = layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.features = output.detach()

    def remove(self):
        self.handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass
