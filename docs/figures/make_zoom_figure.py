"""The lesson 03 figure: the article's CAM plot beside this package's, and what ``align_corners`` changes.

    python docs/figures/make_zoom_figure.py            # writes docs/figures/cam_zoom.png

The map is not a trained model's CAM but a *known* 7x7 map, so that the figure shows the plotting
and the zoom alone: one PNEUMONIA phantom (``render_phantom``, seed 3, 256 px), cut to the network's
224 px input by the evaluation transform, and as the map the share of each 32x32 cell covered by its
lesion mask: the best a 7x7 CAM could do. Everything drawn comes from the package's own functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pneumonia_cam.extensions.localization import align_mask
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.overlay import show_cam_on_image
from pneumonia_cam.steps.zoom import zoom_article, zoom_half_pixel
from pneumonia_cam.support.phantoms import render_phantom

OUT = Path(__file__).resolve().parent / "cam_zoom.png"
SEED, STRIDE = 3, 32


def known_map(seed: int = SEED) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(x, mask, cam)``: the normalized ``(3, 224, 224)`` input, its ``(224, 224)`` lesion mask, and
    the ``(7, 7)`` map of lesion share per 32x32 cell."""
    phantom = render_phantom(np.random.default_rng(seed), 256, pneumonia=True)
    tf = make_transforms(224)["test"]
    x = tf(Image.fromarray(phantom.image).convert("RGB"))  # (3, 224, 224), ImageNet-normalized
    mask = align_mask(phantom.mask, tf)  # (256, 256) -> (224, 224)
    cam = mask.reshape(7, STRIDE, 7, STRIDE).mean(axis=(1, 3))  # (224, 224) -> (7, 7): share per cell
    return x, mask, cam


def make_figure(path: str | Path = OUT, seed: int = SEED) -> dict:
    """Draw the four panels into ``path``; return the means the figure quotes."""
    x, mask, cam = known_map(seed)
    article, ours = zoom_article(cam), zoom_half_pixel(cam)  # (7, 7) -> (224, 224) each
    means = {"7x7": float(cam.mean()), "article": float(article.mean()), "ours": float(ours.mean())}

    fig = Figure(figsize=(9, 8.4), dpi=100)
    FigureCanvasAgg(fig)
    (a, b), (c, d) = fig.subplots(2, 2)
    # (a) The article's plot: the normalized tensor shown as RGB (clipped to [0, 1]; cmap ignored),
    # the corner-aligned zoom in jet on top.
    a.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy(), cmap="jet")  # (3, H, W) -> (H, W, 3)
    a.imshow(article, cmap="jet", alpha=0.5)
    a.set_title("the article: normalized RGB shown as is,\nzoom(order=1) = align_corners=True", fontsize=9)
    a.set_axis_off()
    # (b) Ours: the X-ray un-normalized in gray, the half-pixel zoom, ReLU + min-max, lesion outlined.
    heat = show_cam_on_image(b, x, torch.from_numpy(cam), mask,
                             title="this package: gray X-ray, jet map,\nalign_corners=False, lesion in white")
    fig.colorbar(heat, ax=b, fraction=0.046, pad=0.04)
    # (c) Where the two zooms of the same 7x7 map differ.
    diff = article - ours
    lim = float(np.abs(diff).max())
    im = c.imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    c.contour(mask.astype(float), levels=[0.5], colors="black", linewidths=0.8)
    c.set_title("article zoom - ours (same 7x7 map)", fontsize=9)
    c.set_axis_off()
    fig.colorbar(im, ax=c, fraction=0.046, pad=0.04)
    # (d) One row through the map's maximum: where each zoom puts the 7 cell values.
    row = int(np.unravel_index(cam.argmax(), cam.shape)[0])
    y = row * STRIDE + STRIDE // 2
    d.step(np.arange(8) * STRIDE, np.append(cam[row], cam[row, -1]), where="post", color="gray",
           label="7x7 cells (32 px each)")
    d.plot(article[y], label="align_corners=True (article)")
    d.plot(ours[y], label="align_corners=False (ours)")
    d.plot(np.arange(7) * 223 / 6, cam[row], "o", color="C0", ms=4)  # article: cell j at pixel j*223/6
    d.plot(np.arange(7) * STRIDE + 15.5, cam[row], "s", color="C1", ms=4)  # ours: at the cell's centre
    d.set_xlim(0, 223)
    d.set_xlabel(f"x (px), image row {y}")
    d.set_ylabel("map value")
    d.set_title(f"means: 7x7 {means['7x7']:.4f}, article {means['article']:.4f}, "
                f"ours {means['ours']:.4f}", fontsize=9)
    d.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return means


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    print(out, make_figure(out))
