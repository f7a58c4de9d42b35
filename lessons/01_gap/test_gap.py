"""Lesson 01: global average pooling, pinned.

Every claim of lessons/01_gap/README.md that can be computed is computed here.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.extensions.map_model import build_map_model
from pneumonia_cam.steps.model import build_model

# The functions under test: the package's, or yours with `--student` (lessons/01_gap/exercises.py).
ex = exercise_impl("01_gap")


@pytest.mark.exercise("global_average_pool")
def test_gap_by_hand_on_a_2x2_map():
    # Two channels on a 2x2 grid: the means are (1+2+3+4)/4 = 2.5 and (0+0+0+8)/4 = 2.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])  # (1, 2, 2, 2)
    assert ex.global_average_pool(x).tolist() == [[2.5, 2.0]]


@pytest.mark.exercise("global_average_pool")
def test_gap_equals_adaptive_avg_pool_and_mean_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 7, generator=g, dtype=torch.float64)  # (B, K, h, w)
    ours = ex.global_average_pool(x)  # (B, K)
    pool = nn.AdaptiveAvgPool2d(1)(x).flatten(1)  # (B, K, 1, 1) -> (B, K)
    by_definition = x.sum(dim=(2, 3)) / (7 * 7)
    assert ours.shape == (3, 5)
    # float64: the three orders of summation agree to ~1e-16 relative; 1e-12 leaves ample room.
    torch.testing.assert_close(ours, pool, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, by_definition, rtol=1e-12, atol=1e-12)


@pytest.mark.exercise("global_average_pool")
def test_gap_rejects_non_4d_input():
    with pytest.raises(ValueError, match="B, K, h, w"):
        ex.global_average_pool(torch.zeros(2, 3))


@pytest.mark.exercise("global_average_pool")
def test_resnet_avgpool_is_gap(tiny_resnet):
    """torchvision's ResNet ends layer4 -> avgpool -> flatten -> fc: avgpool is exactly GAP."""
    model = tiny_resnet.double()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size in (1, (1, 1))
    feats = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("A", o))
    with torch.no_grad():
        log_p = model(x)  # (B, 2)
    handle.remove()
    a = feats["A"]
    assert a.shape == (2, 512, 3, 3)  # (B, 512, 3, 3) at 96 px
    # Recompute the head from the hooked features with our GAP: identical log-probabilities.
    by_hand = model.fc(ex.global_average_pool(a))  # (B, K) -> (B, 2)
    torch.testing.assert_close(log_p, by_hand, rtol=1e-12, atol=1e-12)


@pytest.mark.exercise("dense_head_params", "gap_head_params")
def test_head_parameter_counts_dense_vs_gap(judged):
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    # ResNet-50/101/152 at 224 px: layer4 is 2048 x 7 x 7; two classes.
    dense = e.dense_head_params(2048, 7, 7, 2)
    gap = e.gap_head_params(2048, 2)
    assert dense == 2 * 2048 * 49 + 2 == 200_706
    assert gap == 2 * 2048 + 2 == 4_098
    assert (dense - 2) == 49 * (gap - 2)  # the weights shrink by h*w = 49
    # ...and the counts match real layers.
    assert sum(p.numel() for p in nn.Linear(2048 * 49, 2).parameters()) == dense
    assert sum(p.numel() for p in nn.Linear(2048, 2).parameters()) == gap


@pytest.mark.parametrize(
    "arch, channels",
    [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048), ("resnet152", 2048)],
)
def test_layer4_shape_at_224(arch, channels):
    """Output stride 32: a 224 px image gives a 7x7 grid of K feature channels."""
    model = build_model(arch, weights="none").eval()
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("A", o))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))  # batch 1: ResNet-152 at 224 px is ~11.5 GFLOPs
    assert feats["A"].shape == (1, channels, 7, 7)
    assert model.fc[0].in_features == channels


def test_gap_works_at_any_input_size(tiny_resnet):
    """Because GAP averages whatever grid it gets, the same head accepts 32 px and 96 px inputs."""
    with torch.no_grad():
        for size in (32, 96):
            assert tiny_resnet(torch.zeros(1, 3, size, size)).shape == (1, 2)


def test_dilated_layer4_doubles_the_grid():
    """dilate_layer4=True: 14x14 CAM grid at 224 px for ResNet-18 (BasicBlock, dilated by hand)."""
    model = build_map_model("resnet18", weights="none", dilate_layer4=True).eval()
    feats = {}
    model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("A", o))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 224, 224))
    assert feats["A"].shape == (1, 512, 14, 14)
    assert out.shape == (1, 2)


def test_manual_dilation_equals_torchvision_for_bottleneck():
    """Our hand-made dilation reproduces torchvision's replace_stride_with_dilation exactly (ResNet-50)."""
    torch.manual_seed(0)
    ours = build_map_model("resnet50", weights="none", dilate_layer4=True).double().eval()
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    ref.fc = ours.fc  # same head module; the rest gets our weights
    ref.load_state_dict(ours.state_dict())
    ref = ref.double().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
