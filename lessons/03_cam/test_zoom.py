"""Lesson 03, step 3: upsampling the map (``pneumonia_cam.steps.zoom``): which SciPy zoom equals which
``F.interpolate``, and which one keeps the CAM's mean (so mean + bias = logit survives)."""

import numpy as np
import pytest
import torch

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.zoom import zoom_half_pixel

# The functions under test: the package's, or yours with `--student` (lessons/03_cam/exercises.py).
ex = exercise_impl("03_cam")

TOL = 1e-10  # float64; measured differences are ~1e-15


@pytest.fixture
def maps() -> np.ndarray:
    """(8, 7, 7) float64 maps, seed 0: eight random 7x7 CAMs."""
    return np.random.default_rng(0).standard_normal((8, 7, 7))


@pytest.mark.exercise("zoom_article", "upsample")
def test_output_shapes(maps, judged):
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    assert e.zoom_article(maps[0]).shape == (224, 224)
    assert e.upsample(torch.from_numpy(maps), 224).shape == (8, 224, 224)
    assert e.upsample(torch.from_numpy(maps[0]), (224, 112)).shape == (224, 112)
    assert e.zoom_article(maps[0, :6, :6], factor=16).shape == (96, 96)  # dilated layer4: stride 16


@pytest.mark.exercise("zoom_article", "upsample")
def test_two_by_two_by_hand(judged):
    """A left-to-right ramp [[0, 1], [0, 1]] stretched to 4 columns, by hand. Corners aligned: column i
    reads the map at i (2 - 1) / (4 - 1) = i / 3 -> [0, 1/3, 2/3, 1]. Half-pixel centres: column i reads
    it at (i + 1/2) / 2 - 1/2 = -1/4, 1/4, 3/4, 5/4, clamped to [0, 1] -> [0, 1/4, 3/4, 1]."""
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    m = np.array([[0.0, 1.0], [0.0, 1.0]])
    corners = np.tile([0, 1 / 3, 2 / 3, 1], (4, 1))  # (4, 4): every row the same ramp
    half = np.tile([0, 1 / 4, 3 / 4, 1], (4, 1))
    np.testing.assert_allclose(e.zoom_article(m, factor=2), corners, rtol=0, atol=TOL)
    np.testing.assert_allclose(zoom_half_pixel(m, factor=2), half, rtol=0, atol=TOL)
    t = torch.from_numpy(m)
    np.testing.assert_allclose(e.upsample(t, 4, align_corners=True).numpy(), corners, rtol=0, atol=TOL)
    np.testing.assert_allclose(e.upsample(t, 4).numpy(), half, rtol=0, atol=TOL)  # the default


@pytest.mark.exercise("zoom_article", "upsample")
def test_article_zoom_equals_bilinear_align_corners_true(maps, judged):
    """Library behaviour (SciPy and PyTorch, not our arithmetic): ``ndimage.zoom(order=1)`` is
    ``F.interpolate(bilinear, align_corners=True)``; pinned here through our two wrappers."""
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    ours = e.upsample(torch.from_numpy(maps), 224, align_corners=True).numpy()  # batched
    for m, u in zip(maps, ours):
        assert np.abs(e.zoom_article(m) - u).max() <= TOL


@pytest.mark.exercise("upsample")
def test_half_pixel_zoom_equals_bilinear_align_corners_false(maps):
    """Library behaviour (SciPy and PyTorch): ``ndimage.zoom(order=1, grid_mode=True, mode="nearest")``
    is ``F.interpolate(bilinear, align_corners=False)``; pinned here through our two wrappers."""
    ours = ex.upsample(torch.from_numpy(maps), 224, align_corners=False).numpy()
    for m, u in zip(maps, ours):
        assert np.abs(zoom_half_pixel(m) - u).max() <= TOL


@pytest.mark.exercise("zoom_article", "upsample")
def test_half_pixel_keeps_the_mean_the_article_zoom_does_not(maps, judged):
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    t = torch.from_numpy(maps)
    half = e.upsample(t, 224, align_corners=False).numpy()
    assert np.abs(half.mean((1, 2)) - maps.mean((1, 2))).max() <= TOL
    # The article's zoom weights border cells less; the mean moves measurably on every map.
    article = np.stack([e.zoom_article(m) for m in maps])
    rel = np.abs(article.mean((1, 2)) - maps.mean((1, 2))) / np.abs(maps).mean((1, 2))
    assert rel.min() > 1e-3, rel


@pytest.mark.exercise("zoom_article", "upsample")
def test_hot_corner_by_hand(judged):
    """One hot corner cell: mean 1/49 before. Half-pixel keeps it; corner-aligned loses ~2/3."""
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    m = np.zeros((7, 7))
    m[0, 0] = 1.0
    half = e.upsample(torch.from_numpy(m), 224).numpy()
    assert abs(half.mean() - 1 / 49) <= TOL
    # corner-aligned: the corner cell's weight along one axis is sum_i max(0, 1 - 6 i / 223)
    w1d = np.clip(1 - 6 * np.arange(224) / 223, 0, None).sum()
    assert abs(e.zoom_article(m).mean() - (w1d / 224) ** 2) <= TOL
    assert e.zoom_article(m).mean() < 0.4 / 49


@pytest.mark.exercise("upsample")
def test_upsampled_cam_still_averages_to_logit_minus_bias():
    """The identity of step 2 survives half-pixel upsampling (7x7 -> 224x224)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 16, 7, 7, generator=g, dtype=torch.float64)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    cam = torch.einsum("bkhw,k->bhw", feats, w)  # (2, 7, 7)
    gap_logit = feats.mean((2, 3)) @ w  # GAP then linear, bias-free
    assert (ex.upsample(cam, 224).mean((1, 2)) - gap_logit).abs().max() <= TOL
    assert (ex.upsample(cam, 224, align_corners=True).mean((1, 2)) - gap_logit).abs().max() > 1e-4


@pytest.mark.exercise("zoom_article", "upsample")
def test_float32_agrees_with_scipy_float64(maps, judged):
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    ours = e.upsample(torch.from_numpy(maps).float(), 224, align_corners=True).numpy()
    assert np.abs(e.zoom_article(maps[3]) - ours[3]).max() <= 1e-5  # float32 rounding, ~3e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.exercise("upsample")
def test_upsample_on_gpu_matches_cpu(maps):
    t = torch.from_numpy(maps)
    gpu = ex.upsample(t.cuda(), 224).cpu()
    assert gpu.device.type == "cpu" and (gpu - ex.upsample(t, 224)).abs().max() <= 1e-10


@pytest.mark.exercise("upsample")
def test_bad_shape_raises():
    with pytest.raises(ValueError):
        ex.upsample(torch.zeros(1, 1, 7, 7), 224)
