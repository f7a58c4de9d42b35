"""A comparison the article does not make: Grad-CAM (Selvaraju et al., ICCV 2017).

Tutorial section: *Class Activation Maps* (extension) — why CAM needs no gradient, and what the
gradient-based method computes instead.

Grad-CAM weights each channel $A_k$ of the hooked block (``layer4``, shape $K \\times h \\times w$)
by the spatial mean of the gradient of a score $y^c$ with respect to it:

$$
\\alpha^c_k = \\frac{1}{hw} \\sum_{x,y} \\frac{\\partial y^c}{\\partial A_k(x, y)}, \\qquad
L^c(x, y) = \\sum_k \\alpha^c_k A_k(x, y)
$$

(the paper applies a ReLU to $L^c$; here, as for CAM, ReLU and min-max are left to
:func:`pneumonia_cam.steps.weighted_sum.normalize_cam`, so that the raw maps can be compared).

**On the logit** $y^c = z_c = \\sum_k w^c_k \\frac{1}{hw}\\sum_{x,y} A_k(x, y) + b_c$ (GAP + linear
head), $\\partial z_c / \\partial A_k(x, y) = w^c_k / (hw)$ for every cell, so $\\alpha^c_k = w^c_k/(hw)$
and $L^c = M_c / (hw)$: Grad-CAM at ``layer4`` *is* CAM divided by the number of cells, identical
after ReLU + min-max (``lessons/03_cam/test_gradcam.py``).

**On the log-probability** (what this model returns: the head ends in ``LogSoftmax``),
$\\log p_c = z_c - \\log\\sum_j e^{z_j}$, so $d \\log p_c = d z_c - \\sum_j p_j \\, d z_j$. With two
classes, $p_{\\bar c} = 1 - p_c$ and this is $(1 - p_c)(d z_c - d z_{\\bar c})$:

$$
L^c_{\\log p} = \\frac{1 - p_c}{hw} \\left( M_c - M_{\\bar c} \\right).
$$

Two consequences. (1) It is a *contrast* map, class $c$ against the other class — which is the
only part a 2-class softmax can identify (adding the same vector to both weight rows changes
$M_c$ but not one prediction). (2) It shrinks to zero as the model grows confident
($p_c \\to 1$). Min-max hides the scale, but in float32 $1 - p_c$ rounds to 0 once
$z_c - z_{\\bar c} \\gtrsim 17$ while $p_{\\bar c}$ does not, so what is left is
$-p_{\\bar c} M_{\\bar c} / (hw)$: the *other* class's map, upside down. Use ``output="logit"``
unless you want the contrast.

**Frozen backbone.** The gradient is taken with respect to the hooked *activation*, not the
parameters, with ``torch.autograd.grad``; it works when every parameter has
``requires_grad=False`` (the article trains with a frozen backbone). Libraries that register a
tensor hook on the output (``output.register_hook``) fail there, because a frozen network's
``layer4`` output does not require grad; :class:`pneumonia_cam.steps.hook.LayerActivations` with
``keep_graph=True`` switches it on. No parameter's ``.grad`` is touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from pneumonia_cam import CLASSES
from pneumonia_cam.steps import overlay
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import cam_from_model, head_linear

#: The maps :func:`class_maps` can draw: the article's CAM, or Grad-CAM on the logit at ``layer4``.
MAP_METHODS: tuple[str, str] = ("cam", "gradcam")


def grad_cam(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    output: Literal["logit", "logprob"] = "logit",
    linear: nn.Linear | None = None,
) -> torch.Tensor:
    """Grad-CAM maps $L^c = \\sum_k \\alpha^c_k A_k$ of ``layer`` for a batch (raw, before ReLU).

    Args:
        model: the classifier, in eval mode (in train mode BatchNorm would mix the batch, and the
            gradient of one image's score would depend on the others).
        layer: the block to explain, e.g. ``model.layer4``.
        x: ``(B, 3, H, W)`` normalized input.
        class_idx: ``None`` = predicted class, an ``int``, or ``(B,)`` classes.
        output: ``"logit"`` differentiates the head's linear output $z_c$ (reached by hooking
            ``linear``), ``"logprob"`` the model's log-softmax output $\\log p_c$.
        linear: the head's linear layer (default ``model.fc[0]``, or ``model.fc``).

    Returns:
        ``(B, h, w)`` maps in ``x``'s dtype.
    """
    maps, _, _ = grad_cams(model, [layer], x, class_idx, output, linear)
    return maps[0]


def grad_cams(
    model: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    output: Literal["logit", "logprob"] = "logit",
    linear: nn.Linear | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Grad-CAM at several layers from one forward and one backward pass.

    Same arguments as :func:`grad_cam`, with a list of ``layers``. Returns ``(maps, features,
    log_probs)``: per layer the ``(B, h, w)`` map and the detached ``(B, K, h, w)`` activation
    (so the CAM can be computed from ``layer4``'s without another forward pass), and the model's
    ``(B, C)`` output.
    """
    features, grads, log_probs = layer_gradients(model, layers, x, class_idx, output, linear)
    return [grad_cam_map(f, g) for f, g in zip(features, grads)], features, log_probs


def grad_cam_map(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """$L^c = \\sum_k \\alpha^c_k A_k$ with $\\alpha^c_k$ the gradient averaged over the grid.

    Args:
        features: ``(B, K, h, w)`` activations $A_k$.
        grads: ``(B, K, h, w)`` gradients of the class score with respect to them.

    Returns:
        ``(B, h, w)`` raw maps (before ReLU).
    """
    alpha = grads.mean((2, 3))  # (B, K, h, w) -> (B, K): alpha_k^c
    return torch.einsum("bk,bkhw->bhw", alpha, features)  # (B, K), (B, K, h, w) -> (B, h, w)


def layer_gradients(
    model: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    output: Literal["logit", "logprob"] = "logit",
    linear: nn.Linear | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The activations of ``layers`` and the gradients of the class score with respect to them.

    One forward and one backward pass, whatever the number of layers. Arguments as in
    :func:`grad_cam`, with a list of ``layers``.

    Returns:
        features (list[torch.Tensor]): per layer the detached ``(B, K, h, w)`` activation.
        grads (list[torch.Tensor]): per layer the ``(B, K, h, w)`` gradient of each image's score.
        log_probs (torch.Tensor): the model's detached ``(B, C)`` output.
    """
    if output not in ("logit", "logprob"):
        raise ValueError(f'output must be "logit" or "logprob", got {output!r}')
    linear = head_linear(model) if linear is None else linear
    B = x.shape[0]
    hooks = [LayerActivations(layer, keep_graph=True) for layer in layers]
    # enable_grad: works even when the caller is inside torch.no_grad() (as the CLI is).
    try:
        with torch.enable_grad(), LayerActivations(linear, keep_graph=True) as head:
            log_probs = model(x)  # (B, 3, H, W) -> (B, C)
            scores = head.output if output == "logit" else log_probs  # (B, C)
            if class_idx is None:
                class_idx = log_probs.argmax(1)  # argmax log p = argmax z
            idx = torch.as_tensor(class_idx, device=x.device).long().expand(B)  # (B,)
            # Images do not interact in eval mode, so one backward of the summed scores gives
            # each image the gradient of its own score.
            score = scores.gather(1, idx[:, None]).sum()  # (B, C) -> (B, 1) -> ()
            grads = torch.autograd.grad(score, [h.output for h in hooks])  # each (B, K, h, w)
    finally:
        for h in hooks:
            h.remove()
    return [h.features for h in hooks], list(grads), log_probs.detach()


def class_maps(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "cam",
    class_idx: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAM or Grad-CAM at ``model.layer4`` for a batch, with the model's output and the class shown.

    Args:
        model: the classifier in eval mode, with ``layer4`` and the article's head.
        x: ``(B, 3, H, W)`` normalized input.
        method: ``"cam"`` ($M_c$, :func:`pneumonia_cam.steps.weighted_sum.cam_from_model`) or
            ``"gradcam"`` ($L^c$ on the logit, :func:`grad_cam`).
        class_idx: ``None`` = each image's predicted class, or one class for every image.

    Returns:
        maps (torch.Tensor): ``(B, h, w)`` raw maps.
        log_probs (torch.Tensor): the model's ``(B, C)`` output.
        shown (torch.Tensor): ``(B,)`` the class each map is for.

    Raises:
        ValueError: ``method`` is not one of :data:`MAP_METHODS`.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"method must be one of {MAP_METHODS}, got {method!r}")
    if method == "cam":
        maps, log_probs = cam_from_model(model, x, class_idx)
    else:
        (maps,), _, log_probs = grad_cams(model, [model.layer4], x, class_idx)
    shown = log_probs.argmax(1) if class_idx is None else torch.full((len(x),), class_idx, device=x.device)
    return maps, log_probs, shown  # (B, h, w), (B, C), (B,)


@torch.no_grad()
def cam_grid(
    model: nn.Module,
    images: torch.Tensor,
    path: str | os.PathLike,
    masks: Sequence[np.ndarray] | None = None,
    method: str = "cam",
    class_idx: int | None = None,
    titles: Sequence[str] | None = None,
    classes: Sequence[str] = CLASSES,
    ncols: int = 4,
    dpi: int = 100,
) -> Path:
    """Compute maps for a few images and save the grid figure (``cam_grid.png`` in a run folder).

    The maps come from :func:`class_maps`; the drawing is the article's overlay,
    :func:`pneumonia_cam.steps.overlay.plot_cam_grid`.

    Args:
        model: trained classifier (put in eval mode here), with ``layer4`` and ``fc[0]``.
        images: ``(N, 3, H, W)`` normalized inputs (e.g. 8 test images).
        path: output PNG path.
        masks: optional ground-truth masks at input resolution, drawn as contours.
        method: ``"cam"`` or ``"gradcam"`` (Grad-CAM on the logit).
        class_idx: class whose map is drawn; ``None`` = each image's prediction.
        titles: optional first title line per image.

    Returns:
        ``path`` as a ``Path``.
    """
    model.eval()
    images = images.to(next(model.parameters()).device)
    cams, log_probs, shown = class_maps(model, images, method, class_idx)  # (N, h, w), (N, C), (N,)
    fig = overlay.plot_cam_grid(images.cpu(), cams.cpu(), log_probs.exp().cpu(), masks, shown.cpu(),
                                titles, classes, ncols)
    return overlay.save_figure(fig, path, dpi)
