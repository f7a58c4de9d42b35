"""Lesson 03, what goes wrong in the article's CAM code (the hook bug is in ``test_hook.py``):

1. the image fed to the CAM step is not ImageNet-normalized, although the model was trained on
   normalized images: the prediction (and so the class whose map is drawn) changes;
2. the plot: ``imshow(rgb, cmap="jet")`` ignores ``cmap``, and a normalized tensor shown without
   un-normalizing is clipped.
"""

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from pneumonia_cam.steps.overlay import IMAGENET_MEAN, IMAGENET_STD, denormalize

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)`` on a batch."""
    return (x - MEAN) / STD


def blob_xrays(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gray "X-rays" in [0, 1] (random exposure, noise); label 1 adds a bright Gaussian blob.

    Returns ``(n, 3, size, size)`` RGB copies of the gray image (what ``convert("RGB")`` makes) and
    ``(n,)`` labels 0, 1, 0, 1, ...
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = 0.25 + 0.3 * torch.rand(n, 1, 1, generator=g) + 0.05 * torch.randn(n, size, size, generator=g)
    y = torch.arange(n) % 2
    cy = torch.randint(6, size - 6, (n, 1, 1), generator=g)
    cx = torch.randint(6, size - 6, (n, 1, 1), generator=g)
    blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))  # (n, size, size)
    img = (img + 0.4 * y.view(n, 1, 1) * blob).clamp(0, 1)
    return img[:, None].expand(n, 3, size, size).contiguous(), y


def test_unnormalized_input_changes_the_prediction(cam_cnn):
    """Train the tiny CNN for 60 steps on *normalized* blob images (as the article trains on
    normalized X-rays), then evaluate it on the same test images with and without the
    normalization. This is a small synthetic model, not the article's ResNet-152; what it shows is
    the mechanism: unnormalized pixels lie in [0, 1] instead of about [-2, 2.6], a distribution the
    model never saw, and its outputs stop meaning anything."""
    model = cam_cnn.train()
    x_train, y_train = blob_xrays(256, seed=1)
    x_test, y_test = blob_xrays(128, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(x_train), (32,), generator=g)
        loss = nn.functional.nll_loss(model(normalize(x_train[idx])), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p_right = model(normalize(x_test)).exp()  # (128, 2): the evaluation preprocessing
        p_article = model(x_test).exp()  # (128, 2): ToTensor only, as the article's CAM step
    acc_right = (p_right.argmax(1) == y_test).float().mean().item()
    acc_article = (p_article.argmax(1) == y_test).float().mean().item()
    flipped = (p_right.argmax(1) != p_article.argmax(1)).float().mean().item()
    shift = (p_right[:, 1] - p_article[:, 1]).abs().mean().item()
    assert acc_right >= 0.7  # it did learn something (0.83 when written)
    assert acc_article <= 0.6  # chance level on a balanced set (0.50: one class for every image)
    assert flipped >= 0.25  # the predicted class, hence the map drawn, changes for many images (0.62)
    assert shift >= 0.2  # p(class 1) moves by 0.39 on average


def _render(array: np.ndarray, **imshow_kwargs) -> np.ndarray:
    """Rasterize ``imshow(array, **kwargs)`` with Agg and return the RGBA pixels."""
    fig = Figure(figsize=(1, 1), dpi=32)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(array, **imshow_kwargs)
    ax.set_axis_off()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def test_cmap_is_ignored_for_an_rgb_image():
    """``plt.imshow(img, cmap='jet')`` with an (H, W, 3) image: the colours are the image's own.

    Library behaviour (matplotlib), not our code: the article's plotting bug, reproduced."""
    gray = np.random.default_rng(0).random((16, 16))
    rgb = np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3), like convert("RGB")
    assert np.array_equal(_render(rgb, cmap="jet"), _render(rgb, cmap="gray"))  # cmap ignored
    assert not np.array_equal(_render(gray, cmap="jet"), _render(gray, cmap="gray"))  # 2-D: applied


def test_showing_a_normalized_tensor_clips_it():
    """Without un-normalizing, the X-ray's values are mostly outside [0, 1]; imshow clips them."""
    x, _ = blob_xrays(1, seed=0, size=64)
    xn = normalize(x)[0]  # (3, 64, 64), what the model sees
    outside = ((xn < 0) | (xn > 1)).float().mean().item()
    assert outside > 0.3  # a third or more of the pixels would be clipped to black or white
    shown = xn.clamp(0, 1)  # what imshow displays
    assert (shown - x[0]).abs().mean() > 0.2  # far from the real X-ray
    torch.testing.assert_close(denormalize(xn), x[0], atol=1e-6, rtol=0)  # un-normalized: exact


def test_denormalize_clips_to_the_displayable_range():
    """x_hat = -3 lies below 0 after un-normalizing (-3 sigma + mu < 0 in every channel) and is clipped
    to 0; x_hat = 5 lies above 1 and is clipped to 1; x_hat = 0 is the mean itself, kept."""
    xn = torch.tensor([-3.0, 0.0, 5.0]).view(1, 1, 3).expand(3, 1, 3)  # (3, 1, 3): the same row per channel
    out = denormalize(xn)[:, 0]  # (3, 3): channel x value
    expected = torch.tensor([[0.0, 0.485, 1.0], [0.0, 0.456, 1.0], [0.0, 0.406, 1.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
