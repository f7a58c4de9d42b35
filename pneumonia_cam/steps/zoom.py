"""Step 3 of the CAM section: upsample the 7x7 map to the 224x224 image.

Tutorial section: *Class Activation Maps* — the article's
``ndimg.zoom(cam, zoom=(32, 32), order=1)`` (``scipy.ndimage``; 7 x 32 = 224).

A ResNet halves the resolution five times, so ``layer4``'s cells are $s = 32$ pixels apart (16
with a dilated ``layer4``); the map $M_c$ (see :mod:`pneumonia_cam.steps.weighted_sum`) has to be
stretched by $s$ to lie on the image. Bilinear interpolation does it, but there are two ways to
place a coarse grid of $n$ cells on a fine grid of $sn$ pixels, and they differ:

* **corners aligned** — cell $0$ sits on pixel $0$ and cell $n-1$ on pixel $sn-1$, so output pixel
  $i$ reads the map at $i \\frac{n-1}{sn-1}$. ``scipy.ndimage.zoom`` with its default
  ``grid_mode=False`` (the article) does this, exactly as ``F.interpolate(mode="bilinear",
  align_corners=True)``.
* **half-pixel centers** — cell $j$ covers pixels $[sj, s(j+1))$ and its value sits at the centre of
  that block, so pixel $i$ reads the map at $\\frac{i + 1/2}{s} - \\frac12$, clamped at the border.
  ``F.interpolate(..., align_corners=False)`` does this, as does
  ``ndimage.zoom(..., grid_mode=True, mode="nearest")``. It is the geometry a strided convolution
  really has, and for an integer factor every coarse cell contributes total weight $s$ per axis,
  so the **spatial mean is preserved**: the upsampled map still averages to logit $-$ bias. The
  corner-aligned version gives the border cells less weight and changes the mean.

``lessons/03_cam/test_zoom.py`` checks each pair against the other in float64 (to 1e-10), and that
the half-pixel version keeps a random 7x7 map's mean while the article's zoom moves it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def zoom_article(cam: np.ndarray, factor: int = 32) -> np.ndarray:
    """The article's upsampling: ``scipy.ndimage.zoom(cam, (factor, factor), order=1)``.

    Equals :func:`upsample` with ``align_corners=True`` (corners aligned, see module docstring).

    Args:
        cam: ``(h, w)`` NumPy map (one image).
        factor: the network's output stride, 32 for ResNet at ``layer4`` (16 when dilated).

    Returns:
        ``(factor*h, factor*w)`` map.
    """
    return ndimage.zoom(cam, zoom=(factor, factor), order=1)  # (h, w) -> (32h, 32w)


def zoom_half_pixel(cam: np.ndarray, factor: int = 32) -> np.ndarray:
    """SciPy's half-pixel variant: equals :func:`upsample` with ``align_corners=False``."""
    return ndimage.zoom(cam, zoom=(factor, factor), order=1, grid_mode=True, mode="nearest")


def interpolation_matrix(
    n_in: int, n_out: int, align_corners: bool = False, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    r"""1-D linear interpolation from ``n_in`` cells to ``n_out`` pixels, as a matrix.

    Row $i$ holds the weights with which output pixel $i$ mixes the input cells: at most two
    non-zero weights, summing to 1. Built by interpolating the ``n_in`` unit signals with
    ``F.interpolate(mode="linear")``, so it places the grid exactly as ``F.interpolate`` does.

    Returns:
        ``(n_out, n_in)`` matrix $A$ with $\text{upsampled} = A \, \text{signal}$.
    """
    units = torch.eye(n_in, dtype=dtype, device=device).unsqueeze(0)  # (1, n_in, n_in): one unit signal per row
    return F.interpolate(units, size=n_out, mode="linear", align_corners=align_corners)[0].T  # (n_out, n_in)


def upsample(
    cams: torch.Tensor, size: int | tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    r"""Bilinear upsampling of a batch of maps, on whatever device they are.

    Bilinear interpolation is separable: interpolate every column, then every row. With
    $A_H$ (``H x h``) and $A_W$ (``W x w``) from :func:`interpolation_matrix`,

    $$
    \text{up}(M) = A_H \, M \, A_W^\top,
    $$

    two small matrix products per map: the same numbers as
    ``F.interpolate(mode="bilinear", align_corners=...)`` (tested to 1e-10 in float64), several
    times faster on a CPU for a batch of 7x7 maps.

    Args:
        cams: ``(B, h, w)`` maps (or one ``(h, w)`` map).
        size: output ``(H, W)``, or one int for a square output (e.g. 224).
        align_corners: ``False`` (default) = half-pixel centres, keeps the spatial mean for an
            integer factor; ``True`` = the article's ``ndimage.zoom(order=1)``.

    Returns:
        ``(B, H, W)`` (or ``(H, W)``), same dtype and device.
    """
    if cams.ndim not in (2, 3):
        raise ValueError(f"cams must be (B, h, w) or (h, w), got shape {tuple(cams.shape)}")
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    h, w = cams.shape[-2:]
    a_h = interpolation_matrix(h, H, align_corners, cams.dtype, cams.device)  # (H, h)
    a_w = interpolation_matrix(w, W, align_corners, cams.dtype, cams.device)  # (W, w)
    # Rows first, into a small (B, h, W), then one batched product writes each output map once:
    # (H, h) @ ((B, h, w) @ (w, W)) -> (B, H, W). The other order makes the same numbers (up to float
    # rounding) through a (B*H, w) @ (w, W) product with w = 7, measured slower on a CPU.
    return a_h @ (cams @ a_w.T)
