"""Mistake: count the dense head as if its input were K numbers, not the flattened K h w."""

from pneumonia_cam.steps.gap import gap_head_params, global_average_pool  # noqa: F401

LESSON = "01_gap"
EXERCISE = "dense_head_params"
CAUGHT_BY = ["test_gap.py::test_head_parameter_counts_dense_vs_gap"]


def dense_head_params(channels, height, width, num_classes=2):
    return num_classes * (channels + height + width) + num_classes
