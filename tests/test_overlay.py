"""Plots (``pneumonia_cam.steps.overlay``): the X-ray is gray and un-normalized, the map is jet on top,
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

from pneumonia_cam.extensions import gradcam
from pneumonia_cam.steps import overlay
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import class_activation_map


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


def test_to_gray_gives_back_the_xray_the_eval_pipeline_was_fed():
    """File -> ``make_transforms()["test"]`` -> :func:`overlay.to_gray` returns the file's gray levels
    / 255: the overlay un-normalizes with exactly the statistics the data step normalized with."""
    from pneumonia_cam.steps.data import make_transforms

    gray = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    x = make_transforms(32)["test"](Image.fromarray(gray, "L").convert("RGB"))  # (3, 32, 32), normalized
    np.testing.assert_allclose(overlay.to_gray(x), gray / 255, rtol=0, atol=1e-6)


def test_denormalize_by_hand():
    """x = x_hat * sigma + mu with the article's ImageNet statistics: x_hat = 0 gives the mean,
    x_hat = 1 the mean plus one std, per channel."""
    xn = torch.stack([torch.zeros(3, 1, 1), torch.ones(3, 1, 1)])  # (2, 3, 1, 1)
    out = overlay.denormalize(xn).flatten(1)  # (2, 3)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out, torch.stack([mean, mean + std]), rtol=0, atol=1e-7)


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


def test_without_a_map_only_the_xray_and_the_contour_are_drawn():
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    fig = Figure()
    ax = fig.add_subplot()
    assert overlay.show_cam_on_image(ax, normalized(np.full((64, 64), 0.5)), None, mask) is None
    assert len(ax.images) == 1 and ax.images[0].get_cmap().name == "gray"
    assert len(ax.collections) == 1  # the contour set


def test_save_overlay_writes_png_with_colorbar(tmp_path):
    # A map that is 0 everywhere tints the X-ray blue only: any jet red in the file is the colorbar's.
    path = overlay.save_overlay(tmp_path / "sub" / "a.png", normalized(np.full((64, 64), 0.5)),
                                torch.zeros(2, 2), title="x")
    with Image.open(path) as im:
        assert im.format == "PNG"
        px = np.asarray(im.convert("RGB")).astype(int)  # (H, W, 3)
    red = px[..., 0] - px[..., 2] > 60  # jet's top (value 1), at the heat layer's alpha: the colorbar
    blue = px[..., 2] - px[..., 0] > 40  # value 0: the whole overlay and the bar's bottom
    assert red.sum() > 100 and blue.sum() > 10_000
    assert np.nonzero(red)[1].min() > np.nonzero(blue)[1].min() + 100  # the bar is right of the image


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
    """The grid shows each image's predicted-class CAM: the same pixels as plot_cam_grid fed with maps
    computed here from the hooked features (Grad-CAM on the logit is CAM / (h w): the same picture)."""
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = [np.zeros((64, 64), bool)] * 3
    out = gradcam.cam_grid(resnet18_64px, x, tmp_path / "cam_grid.png", masks=masks, method=method,
                           titles=["a", "b", "c"], dpi=100)
    assert out.name == "cam_grid.png"
    assert len(resnet18_64px.layer4._forward_hooks) == 0
    with torch.no_grad(), LayerActivations(resnet18_64px.layer4) as acts:
        log_probs = resnet18_64px(x)  # (3, 2)
    cams = class_activation_map(acts.features, resnet18_64px.fc[0].weight, log_probs.argmax(1))  # (3, 2, 2)
    fig = overlay.plot_cam_grid(x, cams, log_probs.exp(), masks, titles=["a", "b", "c"])
    fig.savefig(tmp_path / "reference.png", dpi=100, bbox_inches="tight")
    with Image.open(out) as a, Image.open(tmp_path / "reference.png") as b:
        got, ref = np.asarray(a.convert("RGB")).astype(int), np.asarray(b.convert("RGB")).astype(int)
    assert got.shape == ref.shape
    assert np.abs(got - ref).mean() < 0.5  # the other class's map, for comparison, differs by ~39


def test_cam_grid_bad_method(tmp_path, resnet18_64px):
    with pytest.raises(ValueError):
        gradcam.cam_grid(resnet18_64px, torch.zeros(1, 3, 64, 64), tmp_path / "g.png", method="lime")
