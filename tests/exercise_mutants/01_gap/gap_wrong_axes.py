"""Mistake: average over the channel and one spatial axis, (B, K, h, w) -> (B, w), instead of the grid."""

from pneumonia_cam.steps.gap import dense_head_params, gap_head_params  # noqa: F401

LESSON = "01_gap"
EXERCISE = "global_average_pool"
CAUGHT_BY = ["test_gap.py::test_gap_by_hand_on_a_2x2_map",
             "test_gap.py::test_gap_equals_adaptive_avg_pool_and_mean_float64"]


def global_average_pool(x):
    if x.dim() != 4:
        raise ValueError("expected feature maps of shape (B, K, h, w)")
    return x.mean(dim=(1, 2))
