"""Lesson 03, write it yourself: the forward hook, the weighted sum, the zoom and the overlay.

Fill in each function below, then let the lesson's own tests judge your code:

    python -m pneumonia_cam.exercises start 03_cam     # copies this file to my_exercises/03_cam.py
    pytest lessons/03_cam --student my_exercises       # the lesson's tests, with your functions

Each failing test names the exercise and repeats its hint; when every exercise passes, pytest says
so in one line. Read lessons/03_cam/README.md first. The answers are in pneumonia_cam/steps/hook.py,
weighted_sum.py, zoom.py and overlay.py: try without them.

Notation (the glossary's; Zhou et al. 2016 write $f_k$ for $A_k$): $A_k(x, y)$ is channel $k$ of ``layer4``'s output at cell $(x, y)$,
$w^c_k$ the head's weight from channel $k$ to class $c$ (``model.fc[0].weight``, shape (C, K)), $b_c$
its bias. The Class Activation Map is $M_c(x, y) = \\sum_k w^c_k A_k(x, y)$.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from pneumonia_cam.steps.weighted_sum import normalize_cam  # ReLU + min-max to [0, 1], given

LESSON = "03_cam"  # tells `pytest --student` which lesson this file answers

# The statistics the images were normalized with (transforms.Normalize in lesson 02).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerActivations:
    """Record the output of ``layer`` on every forward pass, as a context manager.

    Usage: ``with LayerActivations(model.layer4) as acts: model(x)``, then ``acts.features`` is the
    last output, detached, of shape (B, K, h, w) (``None`` before any pass), and the hook is gone.

    * ``__init__`` stores the layer, sets ``self.features = None`` and registers the hook;
    * the hook *replaces* ``self.features`` with ``output.detach()`` on every pass;
    * ``remove()`` unregisters it (calling it twice is fine); ``__exit__`` calls it, even when the
      forward pass raised; ``__enter__`` registers it again if it was removed, never twice.

    (The package's class also has a ``keep_graph`` option for Grad-CAM; this lesson does not need it.)

    Hint: layer.register_forward_hook(fn) returns a handle with .remove(); fn(module, inputs, output)
    runs after each forward. Keep the handle and the features on self (not on the class: that was the
    article's bug), and set the handle to None once removed.
    """

    def __init__(self, layer: nn.Module) -> None:
        raise NotImplementedError("exercise LayerActivations: see lessons/03_cam/README.md, 'Step 1: the hook'")

    def remove(self) -> None:
        raise NotImplementedError("exercise LayerActivations: see lessons/03_cam/README.md, 'Step 1: the hook'")

    def __enter__(self) -> "LayerActivations":
        raise NotImplementedError("exercise LayerActivations: see lessons/03_cam/README.md, 'Step 1: the hook'")

    def __exit__(self, *exc_info: object) -> None:
        raise NotImplementedError("exercise LayerActivations: see lessons/03_cam/README.md, 'Step 1: the hook'")


def class_activation_map(
    features: torch.Tensor,
    weight: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class Activation Maps $M_c(x, y) = \\sum_k w^c_k A_k(x, y)$ (+ $b_c$ in every cell) for a batch.

    Args:
        features: (B, K, h, w) output of the hooked layer.
        weight: (C, K) head weight matrix.
        class_idx: ``None`` = each image's predicted class (argmax over c of the logits
            $z_c = \\frac{1}{hw}\\sum_{x,y} M_c(x, y) + b_c$), an ``int`` for every image, or a (B,)
            integer tensor, one class per image.
        bias: optional (C,) head bias, added to every cell, so that the map's mean is the logit.

    Returns:
        (B, h, w) raw maps in ``features``' dtype (cast ``weight`` to it).

    Raises:
        ValueError: features not 4-D, weight not (C, K), bias not (C,), class_idx not an int or a
            (B,) tensor, or a class outside [0, C).

    Hint: Compute every class's map at once, (C, K) @ (B, K, hw) -> (B, C, hw) (or torch.einsum
    "bkhw,ck->bchw"), then pick one row per image with maps[torch.arange(B), class_idx].
    """
    raise NotImplementedError("exercise class_activation_map: see lessons/03_cam/README.md, "
                              "'Step 2: the weighted sum'")


def zoom_article(cam: np.ndarray, factor: int = 32) -> np.ndarray:
    """The article's upsampling of one (h, w) NumPy map to (factor*h, factor*w): bilinear, corners aligned.

    Hint: scipy.ndimage.zoom with one zoom factor per axis; order=1 is bilinear (order 0 is nearest,
    3 cubic).
    """
    raise NotImplementedError("exercise zoom_article: see lessons/03_cam/README.md, 'Step 3: the zoom'")


def upsample(cams: torch.Tensor, size: int | tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear upsampling of a batch of maps, on whatever device they are.

    Args:
        cams: (B, h, w) maps, or one (h, w) map.
        size: output (H, W), or one int for a square output.
        align_corners: ``False`` (the default) = half-pixel centres, which keeps the spatial mean for an
            integer factor; ``True`` = the article's ``ndimage.zoom(order=1)``.

    Returns:
        (B, H, W) (or (H, W)), same dtype and device.

    Raises:
        ValueError: if ``cams`` is neither 2-D nor 3-D.

    Hint: F.interpolate(x, size=(H, W), mode="bilinear", align_corners=align_corners) wants a
    (N, 1, h, w) input: add the channel (and batch) axis, then view the result back.
    """
    raise NotImplementedError("exercise upsample: see lessons/03_cam/README.md, 'Step 3: the zoom'")


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo ``transforms.Normalize``: $x = \\hat x \\sigma + \\mu$ per channel, clipped to [0, 1].

    Args:
        x: (3, H, W) or (B, 3, H, W) normalized image(s).

    Returns:
        Same shape, values in [0, 1].

    Hint: View mean and std as (3, 1, 1) tensors of x's dtype so that they broadcast over H, W (and B).
    """
    raise NotImplementedError("exercise denormalize: see lessons/03_cam/README.md, 'Step 4: the plot'")


def to_gray(x: torch.Tensor) -> np.ndarray:
    """A normalized (3, H, W) X-ray tensor -> (H, W) gray NumPy image in [0, 1] for display.

    Hint: The X-ray was gray before convert("RGB") copied it into three equal channels: denormalize,
    then average the channels.
    """
    raise NotImplementedError("exercise to_gray: see lessons/03_cam/README.md, 'Step 4: the plot'")


def show_cam_on_image(ax, image: torch.Tensor, cam: torch.Tensor, mask: np.ndarray | None = None,
                      alpha: float = 0.5, title: str | None = None, normalize: bool = True):
    """Draw one overlay on a matplotlib Axes: the gray X-ray, the jet map at ``alpha`` on top.

    Args:
        ax: a matplotlib ``Axes``.
        image: (3, H, W) normalized input tensor (what the model saw).
        cam: (h, w) map on the feature grid, or (H, W); upsample it (half-pixel centres) to (H, W).
        mask: optional (H, W) bool lesion mask, drawn as a white contour (``ax.contour``).
        alpha: heatmap opacity.
        title: optional axes title.
        normalize: apply ``normalize_cam`` (ReLU + min-max) first.

    Returns:
        The heatmap's ``AxesImage`` (what ``ax.imshow`` returns).

    Hint: Two imshow calls, first the 2-D gray image with cmap="gray", vmin=0, vmax=1, then the 2-D map
    with cmap="jet", alpha=alpha, vmin=0, vmax=1. A (H, W, 3) array ignores cmap: both must be 2-D.
    """
    raise NotImplementedError("exercise show_cam_on_image: see lessons/03_cam/README.md, 'Step 4: the plot'")
