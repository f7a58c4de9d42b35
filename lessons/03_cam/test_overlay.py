"""Lesson 03, step 4: the plot (``pneumonia_cam.steps.overlay``): what each layer of the overlay holds.

These tests read the drawn data back from the matplotlib Axes (no pixels): the gray layer must be the
un-normalized X-ray, the jet layer the normalized map at the image's size. ``tests/test_overlay.py``
checks the rendered pixels, the colorbar and the grid.
"""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.weighted_sum import normalize_cam
from pneumonia_cam.steps.zoom import upsample

# The functions under test: the package's, or yours with `--student` (lessons/03_cam/exercises.py).
ex = exercise_impl("03_cam")

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)  # the article's Normalize
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1)


def xray(gray: torch.Tensor) -> torch.Tensor:
    """(H, W) gray in [0, 1] -> (3, H, W) normalized: what convert("RGB") + the eval pipeline give."""
    return (gray.expand(3, *gray.shape) - MEAN) / STD


@pytest.mark.exercise("denormalize")
def test_denormalize_by_hand_batched_and_clipped():
    """x = x_hat sigma + mu per channel: x_hat = 0 gives the mean, x_hat = 1 the mean plus one std;
    a batch (B, 3, H, W) works the same; values outside [0, 1] are clipped for display."""
    xn = torch.stack([torch.zeros(3, 1, 2), torch.ones(3, 1, 2)]).double()  # (2, 3, 1, 2)
    xn[1, :, 0, 1] = 10.0  # far above 1 once un-normalized
    out = ex.denormalize(xn)
    assert out.shape == (2, 3, 1, 2) and out.dtype == torch.float64
    mu, sd = MEAN.flatten(), STD.flatten()
    torch.testing.assert_close(out[0, :, 0, 0], mu, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1, :, 0, 0], mu + sd, rtol=0, atol=1e-12)
    assert torch.equal(out[1, :, 0, 1], torch.ones(3, dtype=torch.float64))  # clipped
    one = torch.full((3, 2, 2), -5.0, dtype=torch.float64)  # a single (3, H, W) image
    assert torch.equal(ex.denormalize(one), torch.zeros(3, 2, 2, dtype=torch.float64))


@pytest.mark.exercise("to_gray")
def test_to_gray_gives_back_the_gray_levels():
    gray = torch.linspace(0, 1, 12, dtype=torch.float64).view(3, 4)  # (H, W)
    out = ex.to_gray(xray(gray))
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    np.testing.assert_allclose(out, gray.numpy(), rtol=0, atol=1e-6)


def _layers(image, cam, **kwargs):
    fig = Figure(figsize=(1, 1), dpi=32)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    heat = ex.show_cam_on_image(ax, image, cam, **kwargs)
    return ax, heat


@pytest.mark.exercise("show_cam_on_image")
def test_overlay_is_the_gray_xray_under_the_jet_map():
    """Two 2-D layers: the un-normalized X-ray in gray, and on top the map (ReLU + min-max, upsampled
    with half-pixel centres to the image's size) in jet at alpha 0.5, both on the fixed range [0, 1]."""
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(32, 32, generator=g, dtype=torch.float64)
    cam = torch.randn(4, 4, generator=g, dtype=torch.float64)  # (h, w): the feature grid
    ax, heat = _layers(xray(gray), cam)
    assert len(ax.images) == 2 and heat is ax.images[1]
    under, over = ax.images
    assert under.get_cmap().name == "gray" and under.get_clim() == (0, 1)
    np.testing.assert_allclose(np.asarray(under.get_array()), gray.numpy(), rtol=0, atol=1e-5)
    assert over.get_cmap().name == "jet" and over.get_alpha() == 0.5 and over.get_clim() == (0, 1)
    expected = normalize_cam(upsample(cam, (32, 32))).numpy()  # (32, 32) in [0, 1]
    np.testing.assert_allclose(np.asarray(over.get_array()), expected, rtol=0, atol=1e-6)


@pytest.mark.exercise("show_cam_on_image")
def test_overlay_options_alpha_mask_and_normalize():
    gray = torch.full((16, 16), 0.5, dtype=torch.float64)
    cam = torch.rand(16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # already (H, W)
    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    ax, heat = _layers(xray(gray), cam, mask=mask, alpha=0.3, normalize=False)
    assert heat.get_alpha() == 0.3
    np.testing.assert_allclose(np.asarray(heat.get_array()), cam.numpy(), rtol=0, atol=1e-6)  # as given
    assert len(ax.collections) == 1  # the mask's contour
