"""Lesson 03, step 3: upsampling the map (``pneumonia_cam.zoom``): which SciPy zoom equals which
``F.interpolate``, and which one keeps the CAM's mean (so mean + bias = logit survives)."""

import numpy as np
import pytest
import torch

from pneumonia_cam.zoom import upsample, zoom_article, zoom_half_pixel

TOL = 1e-10  # float64; measured differences are ~1e-15


@pytest.fixture
def maps() -> np.ndarray:
    """(8, 7, 7) float64 maps, seed 0: eight random 7x7 CAMs."""
    return np.random.default_rng(0).standard_normal((8, 7, 7))


def test_shapes_7_times_32_is_224(maps):
    assert 7 * 32 == 224
    assert zoom_article(maps[0]).shape == (224, 224)
    assert upsample(torch.from_numpy(maps), 224).shape == (8, 224, 224)
    assert upsample(torch.from_numpy(maps[0]), (224, 112)).shape == (224, 112)
    assert zoom_article(maps[0, :6, :6], factor=16).shape == (96, 96)  # dilated layer4: stride 16


def test_article_zoom_equals_bilinear_align_corners_true(maps):
    ours = upsample(torch.from_numpy(maps), 224, align_corners=True).numpy()  # batched
    for m, u in zip(maps, ours):
        assert np.abs(zoom_article(m) - u).max() <= TOL


def test_half_pixel_zoom_equals_bilinear_align_corners_false(maps):
    ours = upsample(torch.from_numpy(maps), 224, align_corners=False).numpy()
    for m, u in zip(maps, ours):
        assert np.abs(zoom_half_pixel(m) - u).max() <= TOL


def test_half_pixel_keeps_the_mean_the_article_zoom_does_not(maps):
    t = torch.from_numpy(maps)
    half = upsample(t, 224, align_corners=False).numpy()
    assert np.abs(half.mean((1, 2)) - maps.mean((1, 2))).max() <= TOL
    # The article's zoom weights border cells less; the mean moves measurably on every map.
    article = np.stack([zoom_article(m) for m in maps])
    rel = np.abs(article.mean((1, 2)) - maps.mean((1, 2))) / np.abs(maps).mean((1, 2))
    assert rel.min() > 1e-3, rel


def test_hot_corner_by_hand():
    """One hot corner cell: mean 1/49 before. Half-pixel keeps it; corner-aligned loses ~2/3."""
    m = np.zeros((7, 7))
    m[0, 0] = 1.0
    half = upsample(torch.from_numpy(m), 224).numpy()
    assert abs(half.mean() - 1 / 49) <= TOL
    # corner-aligned: the corner cell's weight along one axis is sum_i max(0, 1 - 6 i / 223)
    w1d = np.clip(1 - 6 * np.arange(224) / 223, 0, None).sum()
    assert abs(zoom_article(m).mean() - (w1d / 224) ** 2) <= TOL
    assert zoom_article(m).mean() < 0.4 / 49


def test_upsampled_cam_still_averages_to_logit_minus_bias():
    """The identity of step 2 survives half-pixel upsampling (7x7 -> 224x224)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 16, 7, 7, generator=g, dtype=torch.float64)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    cam = torch.einsum("bkhw,k->bhw", feats, w)  # (2, 7, 7)
    gap_logit = feats.mean((2, 3)) @ w  # GAP then linear, bias-free
    assert (upsample(cam, 224).mean((1, 2)) - gap_logit).abs().max() <= TOL
    assert (upsample(cam, 224, align_corners=True).mean((1, 2)) - gap_logit).abs().max() > 1e-4


def test_float32_agrees_with_scipy_float64(maps):
    ours = upsample(torch.from_numpy(maps).float(), 224, align_corners=True).numpy()
    assert np.abs(zoom_article(maps[3]) - ours[3]).max() <= 1e-5  # float32 rounding, ~3e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_upsample_on_gpu_matches_cpu(maps):
    t = torch.from_numpy(maps)
    gpu = upsample(t.cuda(), 224).cpu()
    assert gpu.device.type == "cpu" and (gpu - upsample(t, 224)).abs().max() <= 1e-10


def test_bad_shape_raises():
    with pytest.raises(ValueError):
        upsample(torch.zeros(1, 1, 7, 7), 224)
