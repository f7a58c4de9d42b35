"""Plots (``pneumonia_cam.overlay``): the X-ray is gray and un-normalized, the map is jet on top,
the contour and the colorbar are there, and the grid says what was predicted."""

import numpy as np
import pytest
import torch
import torchvision
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchvision import transforms as T

from pneumonia_cam import overlay


@pytest.fixture
def resnet18_64px():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Sequential(nn.Linear(512, 2), nn.LogSoftmax(dim=1))
    return model.eval()


def normalized(gray: np.ndarray) -> torch.Tensor:
    """(H, W) gray in [0, 1] -> (3, H, W) ImageNet-normalized tensor, as the eval transforms do."""
    x = torch.from_numpy(gray).float().expand(3, *gray.shape)
    return T.Normalize(overlay.IMAGENET_MEAN, overlay.IMAGENET_STD)(x)


def test_imagenet_constants_match_the_data_module():
    data = pytest.importorskip("pneumonia_cam.data")
    assert tuple(overlay.IMAGENET_MEAN) == tuple(data.IMAGENET_MEAN)
    assert tuple(overlay.IMAGENET_STD) == tuple(data.IMAGENET_STD)


def test_denormalize_inverts_normalize_batched():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    xn = T.Normalize(overlay.IMAGENET_MEAN, overlay.IMAGENET_STD)(x)
    torch.testing.assert_close(overlay.denormalize(xn), x, atol=1e-6, rtol=0)
    gray = overlay.to_gray(xn[0])
    assert gray.shape == (8, 8)
    np.testing.assert_allclose(gray, x[0].mean(0).numpy(), atol=1e-6)


def _draw(image, cam, mask=None, size=64):
    fig = Figure(figsize=(1, 1), dpi=size)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    overlay.show_cam_on_image(ax, image, cam, mask)
    canvas.draw()
    return ax, np.asarray(canvas.buffer_rgba())[..., :3].astype(int)  # (size, size, 3)


def test_overlay_is_gray_xray_under_jet_heat():
    gray = np.full((64, 64), 0.5)
    cam = torch.zeros(8, 8)
    cam[1, 1] = 1.0  # hot top-left, cold elsewhere
    ax, px = _draw(normalized(gray), cam)
    hot, cold = px[12, 12], px[52, 52]
    assert hot[0] > hot[2] + 60  # red dominates where the map is 1
    assert cold[2] > cold[0] + 60  # blue dominates where it is 0
    # alpha 0.5 over mid-gray: jet's dark blue (0, 0, 0.5) blends to ~(64, 64, 128)
    np.testing.assert_allclose(cold, [64, 64, 128], atol=6)
    assert len(ax.images) == 2 and ax.images[0].get_cmap().name == "gray"
    assert ax.images[1].get_cmap().name == "jet" and ax.images[1].get_alpha() == 0.5


def test_overlay_shows_the_unnormalized_xray():
    """With a map that is 0 everywhere the heat layer is a uniform tint, so the X-ray's contrast
    shows through: a bright band stays brighter than a dark band."""
    gray = np.full((64, 64), 0.2)
    gray[:, 32:] = 0.8
    _, px = _draw(normalized(gray), torch.zeros(8, 8))
    assert px[32, 48].sum() - px[32, 16].sum() > 200  # a clipped, normalized image would saturate


def test_ground_truth_contour_is_drawn():
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    ax, px = _draw(normalized(np.full((64, 64), 0.5)), torch.zeros(8, 8), mask)
    assert len(ax.collections) == 1  # the contour set
    assert (px[20:40, 19:21] > 200).all(axis=-1).any()  # white pixels on the mask's left edge


def test_save_overlay_writes_png_with_colorbar(tmp_path):
    path = overlay.save_overlay(tmp_path / "sub" / "a.png", normalized(np.full((64, 64), 0.5)),
                                torch.rand(2, 2), title="x")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100


def test_plot_cam_grid_titles_and_colorbar():
    images = torch.stack([normalized(np.full((32, 32), v)) for v in (0.2, 0.4, 0.6, 0.8, 0.5)])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    fig = overlay.plot_cam_grid(images, torch.rand(5, 4, 4), probs, shown=torch.tensor(1), ncols=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "pred NORMAL p=0.90\nmap: PNEUMONIA"
    assert titles[1] == "pred PNEUMONIA p=0.80"
    assert len(titles) == 5 and len(fig.axes) == 2 * 4 + 1  # 2 rows of 4, one shared colorbar


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_cam_grid_from_a_model(tmp_path, resnet18_64px, method):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = [np.zeros((64, 64), bool)] * 3
    out = overlay.cam_grid(resnet18_64px, x, tmp_path / "cam_grid.png", masks=masks, method=method,
                           titles=["a", "b", "c"])
    assert out.name == "cam_grid.png" and out.stat().st_size > 1000
    assert len(resnet18_64px.layer4._forward_hooks) == 0


def test_cam_grid_bad_method(tmp_path, resnet18_64px):
    with pytest.raises(ValueError):
        overlay.cam_grid(resnet18_64px, torch.zeros(1, 3, 64, 64), tmp_path / "g.png", method="lime")
