"""Step 4 of the CAM section: draw the map on the X-ray.

Tutorial section: *Class Activation Maps* — "plot the heatmap over the image".

What the overlay should be: the network's input in gray (the X-ray after the evaluation Resize and
CenterCrop, with the ImageNet normalization undone), and the normalized map
$S = \\mathrm{minmax}(\\mathrm{ReLU}(M_c))$ (Zhou et al. 2016's class activation map
$M_c(x, y) = \\sum_k w^c_k A_k(x, y)$, upsampled to the image) in the ``jet`` colormap at alpha 0.5
on top, with a colorbar saying that red is 1 (the map's maximum) and blue 0.

Two things go wrong in the article's plot, and both are shown in ``lessons/03_cam``:

* The input tensor is ImageNet-normalized, $\\hat x = (x - \\mu) / \\sigma$ per channel, with values
  in about $[-2.1, 2.6]$. Shown as is, matplotlib clips it to $[0, 1]$ and half the X-ray goes
  black. :func:`denormalize` inverts it, $x = \\hat x \\sigma + \\mu$.
* ``imshow(rgb_image, cmap="jet")``: a ``(H, W, 3)`` array is already colours, so matplotlib
  *ignores* ``cmap``; a colormap applies only to a 2-D array. The X-ray is shown as its own gray
  RGB and the heatmap must be a separate 2-D ``imshow`` with ``cmap="jet"`` and ``alpha``.

Plotting uses matplotlib's object API (``Figure`` + Agg canvas, never ``pyplot``), so it needs no
display and leaves no global state behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumonia_cam import CLASSES

# The Normalize statistics the images were fed with (re-exported): un-normalizing undoes exactly those.
from pneumonia_cam.steps.data import IMAGENET_MEAN, IMAGENET_STD
from pneumonia_cam.steps.weighted_sum import normalize_cam
from pneumonia_cam.steps.zoom import upsample


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo ``transforms.Normalize``: $x = \\hat x \\sigma + \\mu$, clipped to [0, 1].

    Args:
        x: ``(3, H, W)`` or ``(B, 3, H, W)`` normalized image(s).

    Returns:
        Same shape, values in [0, 1].
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)  # (3,) -> (3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)


def to_gray(x: torch.Tensor) -> np.ndarray:
    """A normalized ``(3, H, W)`` X-ray tensor -> ``(H, W)`` gray image in [0, 1] for display.

    The X-ray was gray before ``convert("RGB")`` copied it into three equal channels; their mean
    gives it back.
    """
    return denormalize(x.detach().float().cpu()).mean(0).numpy()  # (3, H, W) -> (H, W)


def show_cam_on_image(
    ax,
    image: torch.Tensor,
    cam: torch.Tensor | None,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    normalize: bool = True,
):
    """Draw one overlay on a matplotlib Axes: gray X-ray, jet map at ``alpha``, lesion contour.

    Args:
        ax: a matplotlib ``Axes``.
        image: ``(3, H, W)`` normalized input tensor (what the model saw).
        cam: ``(h, w)`` map on the feature grid or ``(H, W)``; upsampled with half-pixel centres.
            ``None``: the X-ray (and contour) alone, e.g. beside the maps.
        mask: optional ``(H, W)`` bool ground-truth lesion mask, drawn as a white contour.
        alpha: heatmap opacity (0.5: both the map and the anatomy stay readable).
        title: optional axes title.
        normalize: apply ReLU + min-max (set ``False`` if ``cam`` is already in [0, 1]).

    Returns:
        The heatmap's ``AxesImage`` (pass it to ``fig.colorbar``); ``None`` without ``cam``.
    """
    H, W = image.shape[-2:]
    ax.imshow(to_gray(image), cmap="gray", vmin=0, vmax=1)  # 2-D array: cmap applies
    heat = None
    if cam is not None:
        cam = cam.detach().double().cpu()
        if cam.shape != (H, W):
            cam = upsample(cam, (H, W))  # (h, w) -> (H, W)
        if normalize:
            cam = normalize_cam(cam)
        heat = ax.imshow(cam.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="white", linewidths=1.2)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return heat


def save_overlay(
    path: str | os.PathLike,
    image: torch.Tensor,
    cam: torch.Tensor,
    mask: np.ndarray | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    dpi: int = 100,
) -> Path:
    """One image, one overlay, with a colorbar: what ``python -m pneumonia_cam.cam`` writes."""
    fig = Figure(figsize=(4.6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    heat = show_cam_on_image(ax, image, cam, mask, alpha=alpha, title=title)
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04, label="normalized CAM")
    return save_figure(fig, path, dpi)


def plot_cam_grid(
    images: torch.Tensor,
    cams: torch.Tensor,
    probs: torch.Tensor,
    masks: Sequence[np.ndarray] | None = None,
    shown: torch.Tensor | None = None,
    titles: Sequence[str] | None = None,
    classes: Sequence[str] = CLASSES,
    ncols: int = 4,
) -> Figure:
    """A grid of overlays titled with the predicted class and its probability.

    Args:
        images: ``(N, 3, H, W)`` normalized inputs.
        cams: ``(N, h, w)`` raw maps.
        probs: ``(N, C)`` class probabilities.
        masks: optional ``N`` ground-truth masks ``(H, W)``.
        shown: ``(N,)`` class each map is for (default: the predicted class); named in the title
            when it is not the prediction.
        titles: optional first title line per image (e.g. the file or the true class).
        classes: class names, index order.
        ncols: images per row.

    Returns:
        The figure (one shared colorbar).
    """
    n = len(images)
    pred = probs.argmax(1)  # (N, C) -> (N,)
    shown = pred if shown is None else torch.as_tensor(shown).expand(n)
    nrows = max(1, -(-n // ncols))
    ncols = min(ncols, max(n, 1))
    fig = Figure(figsize=(2.6 * ncols + 0.8, 2.8 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    heat = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        c = int(pred[i])
        lines = [titles[i]] if titles else []
        lines.append(f"pred {classes[c]} p={float(probs[i, c]):.2f}")
        if int(shown[i]) != c:
            lines.append(f"map: {classes[int(shown[i])]}")
        mask = masks[i] if masks is not None else None
        heat = show_cam_on_image(ax, images[i], cams[i], mask, title="\n".join(lines))
    if heat is not None:
        fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="normalized map")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG at ``path`` (its folder created if needed), cropped to what is drawn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
