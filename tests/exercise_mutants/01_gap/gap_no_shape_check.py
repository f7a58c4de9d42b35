"""Mistake: average the last two axes of whatever comes in: a (B, K) input silently gives (B,)."""

from pneumonia_cam.steps.gap import dense_head_params, gap_head_params  # noqa: F401

LESSON = "01_gap"
EXERCISE = "global_average_pool"
CAUGHT_BY = ["test_gap.py::test_gap_rejects_non_4d_input"]


def global_average_pool(x):
    return x.mean(dim=(-2, -1))
