"""More maps from the same trained model: finer layers, flips, and the contrast between the classes.

Tutorial section: *Class Activation Maps* (extension). Each method reads the network as it was
trained (nothing is retrained) and returns raw ``(B, h, w)`` maps on its own grid, for one target
class; scoring upsamples and normalizes them like the CAM
(:mod:`pneumonia_cam.extensions.localization`). Notation: $A_k(x, y)$ is channel $k$ of a hooked
block's output, $w^c_k$ and $b_c$ the head's weight and bias, $z_c$ the logit of class $c$.

* **CAM** (Zhou et al. 2016), the article's map at ``layer4``: $M_c = \\sum_k w^c_k A_k$.
* **Dilated CAM**: the CAM of the same weights with ``layer4`` dilated instead of strided
  (:func:`pneumonia_cam.extensions.map_model.dilate_layer4_` on a copy), a 14x14 grid at 224 px.
* **Grad-CAM** at ``layer3`` (:mod:`pneumonia_cam.extensions.gradcam`): channel weights are the
  spatial mean of the gradient.
* **LayerCAM** (Jiang et al., IEEE TIP 2021, Eq. 4-5) at ``layer3``, and fused over ``layer3`` and
  ``layer4``: every *cell* keeps its own positive gradient as the weight (below).
* **Flip averaging** (test-time augmentation): $\\frac12\\big(M_c(x) + F(M_c(F(x)))\\big)$ with $F$ the
  horizontal flip; for a network that commutes with $F$ it is the CAM itself.
* **Contrastive CAM**: the CAM of $w^1 - w^0$ with bias $b_1 - b_0$, i.e. $M_1 - M_0 + b_1 - b_0$,
  whose spatial mean is the log-odds $z_1 - z_0 = \\log p_1 - \\log p_0$: a two-class softmax
  cannot tell $M_1$ from $M_1 + v$ when the same $v$ is added to $M_0$, only their difference.

**LayerCAM** (Jiang et al., IEEE TIP 2021, Eq. 4-5) weights every *cell* by its own positive
gradient,

$$
L^c(x, y) = \\mathrm{ReLU}\\Big(\\sum_k \\mathrm{ReLU}\\Big(\\frac{\\partial z_c}{\\partial A_k(x, y)}\\Big)
A_k(x, y)\\Big),
$$

which stays sharp at earlier, finer layers, where a channel's mean gradient blurs. At ``layer4``
of a GAP + linear head $\\partial z_c / \\partial A_k(x, y) = w^c_k / (hw)$, so LayerCAM there is
the CAM of the positive weights, $\\sum_k \\max(w^c_k, 0) A_k / (hw)$. Maps of several layers are
fused (Jiang et al., Sec. III-C) by scaling each normalized map $\\hat L$ as
$\\tanh(\\gamma \\hat L)$, $\\gamma = 2$ (their Eq. 9), upsampling to the finest grid and taking
the element-wise maximum.

:func:`saliency_maps` computes any set of them with one forward and one backward pass (plus one
forward for the flip and one for the dilated copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pneumonia_cam.extensions.gradcam import grad_cam_map, layer_gradients
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import (
    cam_from_model,
    class_activation_map,
    head_linear,
    normalize_cam,
)
from pneumonia_cam.steps.zoom import upsample

#: The methods :func:`saliency_maps` can compute.
METHODS = ("cam", "gradcam", "gradcam_layer3", "layercam_layer3", "layercam_layer34", "cam_flip",
           "contrastive_cam", "dilated_cam")
_NEEDS_GRAD = {"gradcam", "gradcam_layer3", "layercam_layer3", "layercam_layer34"}
_NEEDS_LAYER3 = {"gradcam_layer3", "layercam_layer3", "layercam_layer34"}


def layer_cam(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM $L^c = \\mathrm{ReLU}(\\sum_k \\mathrm{ReLU}(\\partial z_c / \\partial A_k) \\odot A_k)$.

    Args:
        features: ``(B, K, h, w)`` activations $A_k$ of a layer.
        grads: ``(B, K, h, w)`` gradients $\\partial y^c / \\partial A_k$ of the target score.

    Returns:
        ``(B, h, w)`` maps, non-negative.
    """
    if features.shape != grads.shape:
        raise ValueError(f"features {tuple(features.shape)} and grads {tuple(grads.shape)} differ in shape")
    return (grads.clamp_min(0) * features).sum(1).clamp_min(0)  # (B, K, h, w) -> (B, h, w)


def fuse_layer_cams(maps: Sequence[torch.Tensor], gamma: float = 2.0) -> torch.Tensor:
    """Fuse LayerCAM maps of several layers: $\\max_l \\tanh(\\gamma \\, \\hat L_l)$ on the finest grid.

    $\\hat L_l$ is layer $l$'s map after ReLU and min-max (:func:`normalize_cam`), upsampled
    (half-pixel bilinear) to the largest grid among ``maps`` (Jiang et al. 2021, Eq. 9 and Sec. III-C).

    Args:
        maps: ``(B, h_l, w_l)`` maps, one per layer.
        gamma: the scale inside the tanh; 2 in the paper.

    Returns:
        ``(B, h, w)`` fused map on the finest grid, values in $[0, \\tanh\\gamma]$.
    """
    if not maps:
        raise ValueError("fuse_layer_cams needs at least one map")
    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    scaled = [torch.tanh(gamma * normalize_cam(m)) for m in maps]  # each (B, h_l, w_l), in [0, tanh(gamma)]
    return torch.stack([upsample(m, size) for m in scaled]).amax(0)  # (L, B, h, w) -> (B, h, w)


def contrastive_cam(features: torch.Tensor, linear: nn.Linear, target: int = 1, other: int = 0) -> torch.Tensor:
    """The log-odds map $M_{t} - M_{o} + b_{t} - b_{o}$: the CAM of the weight difference.

    Args:
        features: ``(B, K, h, w)`` output of the block the head pools (``layer4``).
        linear: the head's linear layer (weights ``(C, K)``, bias ``(C,)``).
        target: the class $t$ the map argues for (PNEUMONIA = 1).
        other: the class $o$ it argues against.

    Returns:
        ``(B, h, w)`` raw maps whose spatial mean is $z_t - z_o$ for a mean-pooled head.
    """
    weight = (linear.weight[target] - linear.weight[other])[None]  # (C, K) -> (1, K)
    bias = None if linear.bias is None else (linear.bias[target] - linear.bias[other])[None]  # (1,)
    return class_activation_map(features, weight, 0, bias=bias)


@torch.no_grad()
def flip_averaged_cam(
    model: nn.Module, x: torch.Tensor, class_idx: int = 1, cam: torch.Tensor | None = None
) -> torch.Tensor:
    """CAM averaged over the image and its mirror: $\\frac12(M_c(x) + F(M_c(F(x))))$.

    Args:
        model: the classifier in eval mode (``layer4`` and the article's head).
        x: ``(B, 3, H, W)`` normalized input.
        class_idx: the class whose map is drawn.
        cam: ``(B, h, w)`` CAM of ``x`` when already computed (saves a forward pass).

    Returns:
        ``(B, h, w)`` raw maps.
    """
    if cam is None:
        cam, _ = cam_from_model(model, x, class_idx)
    flipped, _ = cam_from_model(model, x.flip(-1), class_idx)  # (B, h, w), of the mirrored image
    return (cam + flipped.flip(-1)) / 2  # flipped back into the image's own orientation


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] = METHODS,
    target_class: int = 1,
    dilated_model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Raw maps of ``methods`` for one batch, each on its own grid.

    Args:
        model: the classifier in eval mode, with ``layer3``, ``layer4`` and the article's head.
        x: ``(B, 3, H, W)`` normalized input.
        methods: names from :data:`METHODS`.
        target_class: whose map: the same class for every image (PNEUMONIA = 1).
        dilated_model: the same weights with a dilated ``layer4``; needed for ``"dilated_cam"``.

    Returns:
        ``{method: (B, h, w)}`` detached maps on ``x``'s device.

    Raises:
        ValueError: an unknown method, or ``"dilated_cam"`` without ``dilated_model``.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if "dilated_cam" in methods and dilated_model is None:
        raise ValueError("dilated_cam needs dilated_model, e.g. dilate_layer4_(copy.deepcopy(model))")
    linear = head_linear(model)
    if _NEEDS_GRAD & set(methods):
        # One forward and one backward pass for every layer3/layer4 map.
        layers = [model.layer4] + ([model.layer3] if _NEEDS_LAYER3 & set(methods) else [])
        feats, grads, _ = layer_gradients(model, layers, x, target_class, linear=linear)
    else:
        with torch.no_grad(), LayerActivations(model.layer4) as acts:
            model(x)  # (B, 3, H, W) -> (B, C)
        feats, grads = [acts.features], [None]
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        cam = class_activation_map(feats[0], linear.weight, target_class)  # (B, K, h, w) -> (B, h, w)
        for name in methods:
            if name == "cam":
                maps[name] = cam
            elif name == "gradcam":
                maps[name] = grad_cam_map(feats[0], grads[0])
            elif name == "gradcam_layer3":
                maps[name] = grad_cam_map(feats[1], grads[1])
            elif name == "layercam_layer3":
                maps[name] = layer_cam(feats[1], grads[1])
            elif name == "layercam_layer34":
                maps[name] = fuse_layer_cams([layer_cam(feats[1], grads[1]), layer_cam(feats[0], grads[0])])
            elif name == "cam_flip":
                maps[name] = flip_averaged_cam(model, x, target_class, cam=cam)
            elif name == "contrastive_cam":
                maps[name] = contrastive_cam(feats[0], linear, target_class, 1 - target_class)
            elif name == "dilated_cam":
                maps[name], _ = cam_from_model(dilated_model, x, target_class)
    return maps
