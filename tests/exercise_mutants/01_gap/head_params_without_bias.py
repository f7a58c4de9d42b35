"""Mistake: count the GAP head's weights and forget its C biases."""

from pneumonia_cam.steps.gap import dense_head_params, global_average_pool  # noqa: F401

LESSON = "01_gap"
EXERCISE = "gap_head_params"
CAUGHT_BY = ["test_gap.py::test_head_parameter_counts_dense_vs_gap"]


def gap_head_params(channels, num_classes=2):
    return num_classes * channels
