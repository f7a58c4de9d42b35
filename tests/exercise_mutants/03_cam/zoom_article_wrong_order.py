"""Mistake: leave out order=1: scipy.ndimage.zoom then interpolates with its default order=3 (cubic)."""

from scipy import ndimage

from pneumonia_cam.steps.hook import LayerActivations  # noqa: F401
from pneumonia_cam.steps.overlay import denormalize, show_cam_on_image, to_gray  # noqa: F401
from pneumonia_cam.steps.weighted_sum import class_activation_map  # noqa: F401
from pneumonia_cam.steps.zoom import upsample, zoom_article  # noqa: F401

LESSON = "03_cam"
EXERCISE = "zoom_article"
CAUGHT_BY = ["test_zoom.py::test_two_by_two_by_hand", "test_zoom.py::test_article_zoom_equals_bilinear_align_corners_true"]


def zoom_article(cam, factor=32):  # noqa: F811
    return ndimage.zoom(cam, zoom=(factor, factor))  # order defaults to 3: cubic
