"""Step 2 of the CAM section: the weighted sum of feature maps (Zhou et al., CVPR 2016, Eq. 2).

Tutorial section: *Class Activation Maps* — "multiply the feature maps by the weights of the
predicted class and sum them up" (the article: ``cam = np.dot(out_features, w)``).

Notation (one image): $A_k(x, y)$ is channel $k \\in \\{1..K\\}$ of ``layer4``'s output at cell
$(x, y)$ of the $h \\times w$ grid; $w^c_k$ is row $c$, column $k$ of the head's weight matrix
$W \\in \\mathbb{R}^{C \\times K}$ (``model.fc[0].weight``); $b_c$ its bias (``model.fc[0].bias``).
The network's head is global average pooling followed by that linear layer, so the logit of
class $c$ is

$$
\\begin{aligned}
z_c &= \\sum_k w^c_k \\, \\frac{1}{hw} \\sum_{x,y} A_k(x, y) + b_c
     = \\frac{1}{hw} \\sum_{x,y} M_c(x, y) + b_c, \\\\
M_c(x, y) &= \\sum_k w^c_k \\, A_k(x, y).
\\end{aligned}
$$

$M_c$ is the Class Activation Map: because pooling and the linear layer are both linear, they
commute, and the map's spatial mean *is* the logit minus the bias. Nothing is approximated; the
lesson test ``test_weighted_sum.py`` checks it to 1e-10 in float64. The head ends in
``LogSoftmax``, so the model returns $\\log p_c = z_c - \\log \\sum_j e^{z_j}$.

Batched here: features ``(B, K, h, w)`` and weights ``(C, K)`` give all maps in one batched matmul,
``(B, C, h, w)``, of which each image keeps the row of its class. ``bias`` (optional) is added to
every cell, so that the spatial mean of the returned map equals the logit exactly. Zhou et al. and
the article leave it out, and so does :func:`cam_from_model` by default.

Normalization (ReLU, then min-max to [0, 1]) is for display and scoring only and lives in
:func:`normalize_cam`; the raw map is what the identities hold for. Because the ReLU comes first,
a constant shift such as $b_c$ does *not* vanish under it: $[-1, 0, 1, 2]$ normalizes to
$[0, 0, \\tfrac12, 1]$, the same map plus 1 to $[0, \\tfrac13, \\tfrac23, 1]$.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pneumonia_cam.steps.hook import LayerActivations


def class_activation_map(
    features: torch.Tensor,
    weight: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class Activation Maps $M_c(x, y) = \\sum_k w^c_k A_k(x, y)$ for a batch.

    Args:
        features: ``(B, K, h, w)`` output of the hooked layer (``LayerActivations.features``).
        weight: ``(C, K)`` head weight matrix, ``model.fc[0].weight``.
        class_idx: which class's map each image gets: ``None`` = the predicted class (the argmax
            of the logits recomputed from ``features``, ``weight`` and ``bias`` — pass the bias so
            this matches the model's prediction), an ``int`` for every image, or a ``(B,)``
            integer tensor, one class per image.
        bias: optional ``(C,)`` head bias, added to every cell so that
            ``cam.mean((1, 2)) == logit`` exactly.

    Returns:
        ``(B, h, w)`` raw maps (not ReLU-ed, not normalized) in ``features``' dtype and device.

    Raises:
        ValueError: on shape mismatches or a class index out of range.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, K, h, w), got shape {tuple(features.shape)}")
    B, K = features.shape[:2]
    if weight.ndim != 2 or weight.shape[1] != K:
        raise ValueError(f"weight must be (C, {K}), got shape {tuple(weight.shape)}")
    C = weight.shape[0]
    # Cast the (usually float32) parameters to the features' dtype: float64 features give a
    # float64 map (the equivalence tests), and nothing here needs a gradient.
    weight = weight.detach().to(features)
    if bias is not None:
        if bias.shape != (C,):
            raise ValueError(f"bias must be ({C},), got shape {tuple(bias.shape)}")
        bias = bias.detach().to(features)
    if class_idx is None:
        # The predicted class from the logits, without computing any map: the spatial mean of M_c
        # is w^c . GAP(f), so logits = GAP(f) W^T + b. (B, K, h, w) -> (B, K) -> (B, C) -> (B,)
        logits = features.mean((2, 3)) @ weight.T
        class_idx = (logits if bias is None else logits + bias).argmax(1)
    idx = torch.as_tensor(class_idx, device=features.device).long()
    if idx.ndim == 0:
        idx = idx.expand(B)  # one int for every image -> (B,)
    if idx.shape != (B,):
        raise ValueError(f"class_idx must be an int or a ({B},) tensor, got {tuple(idx.shape)}")
    if idx.min() < 0 or idx.max() >= C:
        raise ValueError(f"class_idx must be in [0, {C}), got {idx.tolist()}")
    # Only the map each image needs: sum over k of w[c_b, k] * f[b, k, y, x], one batched matrix
    # product over the flattened grid. flatten(2) is a view in both layouts (NCHW and channels_last),
    # so the features are read where they are, never copied.
    w_b = weight[idx]  # (B, K): row c_b of the head for image b
    h, w = features.shape[2:]
    maps = torch.bmm(w_b.unsqueeze(1), features.flatten(2)).view(B, h, w)  # (B, 1, K) @ (B, K, h*w) -> (B, h, w)
    if bias is not None:
        maps = maps + bias[idx].view(B, 1, 1)  # the same b_c in every cell
    return maps


def normalize_cam(cam: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ReLU, then per-map min-max scaling to [0, 1], for display and localization scores.

    $$
    S(x, y) = \\frac{R(x, y) - \\min R}{\\max R - \\min R}, \\qquad R = \\max(M, 0).
    $$

    The ReLU keeps only evidence *for* the class (Grad-CAM's convention; Zhou et al. min-max the
    raw map, which puts the peak in the same place but sends the map's minimum, not 0, to 0). Since the
    ReLU comes first, adding a constant to ``cam`` changes the result. A constant (or all-negative)
    map has no peak to show and becomes all zeros instead of dividing by zero.

    Args:
        cam: ``(..., h, w)`` raw maps, e.g. ``(B, h, w)``.
        eps: a map whose range is at most ``eps`` times its largest value counts as constant
            (relative, so that a tiny but real map, e.g. a log-prob Grad-CAM of ~1e-15, keeps
            its shape, while float rounding on a constant map does not become a pattern).

    Returns:
        Same shape and dtype, values in [0, 1].
    """
    cam = cam.clamp_min(0)
    flat = cam.flatten(-2)  # (..., h, w) -> (..., h*w)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    rng = hi - lo
    peaked = rng > eps * hi  # (..., 1): False for constant (incl. all-zero) maps
    safe = torch.where(peaked, rng, torch.ones_like(rng))  # never divide by ~0
    out = torch.where(peaked, (flat - lo) / safe, torch.zeros_like(flat))
    return out.view_as(cam)


@torch.no_grad()
def cam_from_model(
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | torch.Tensor | None = None,
    layer: nn.Module | None = None,
    linear: nn.Linear | None = None,
    with_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once on ``x`` and return ``(cams, log_probs)``: the whole article step.

    Args:
        model: a GAP + linear classifier in eval mode (``model.layer4``, ``model.fc[0]`` by
            default, the layout of ``model.build_model``).
        x: ``(B, 3, H, W)`` *normalized* input (the evaluation transforms).
        class_idx: ``None`` = the model's predicted class, an ``int``, or ``(B,)`` classes.
        layer: the hooked block (default ``model.layer4``).
        linear: the head's linear layer (default ``model.fc[0]``, or ``model.fc`` if it is a
            plain ``nn.Linear``).
        with_bias: add $b_c$ to every cell (then ``cams.mean((1, 2))`` is the logit). Off by
            default, as in the paper and the article (``np.dot(features, w)``): a constant shift
            moves where the ReLU of :func:`normalize_cam` cuts, and without it CAM and Grad-CAM
            normalize to the same map.

    Returns:
        ``cams (B, h, w)`` raw maps and ``log_probs (B, C)``.
    """
    layer = model.layer4 if layer is None else layer
    linear = head_linear(model) if linear is None else linear
    with LayerActivations(layer) as acts:
        log_probs = model(x)  # (B, 3, H, W) -> (B, C)
    if class_idx is None:
        class_idx = log_probs.argmax(1)  # (B,): the model's own prediction
    bias = linear.bias if with_bias else None
    cams = class_activation_map(acts.features, linear.weight, class_idx, bias=bias)
    return cams, log_probs


def head_linear(model: nn.Module) -> nn.Module:
    """The head's layer that holds $w^c_k$ (``.weight``, (C, K)) and $b_c$ (``.bias``, (C,)).

    ``model.fc[0]`` in the article's layout (``fc = Sequential(Linear, LogSoftmax)``), or ``model.fc``
    when it is a plain ``nn.Linear``. Any layer in that place with a 2-D ``weight`` and a ``bias`` is
    accepted: a head that computes the class map first and then pools it
    (:class:`pneumonia_cam.extensions.map_model.ClassMapPool`) keeps both names, and its logit is
    the pooled CAM plus $b_c$.
    """
    fc = model.fc
    if isinstance(fc, nn.Linear):
        return fc
    if isinstance(fc, nn.Sequential) and len(fc) and _holds_weight_and_bias(fc[0]):
        return fc[0]
    raise TypeError(f"model.fc must be nn.Linear or nn.Sequential(a layer with a (C, K) weight and a (C,) "
                    f"bias, ...), got {fc}")


def _holds_weight_and_bias(layer: nn.Module) -> bool:
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    return isinstance(weight, torch.Tensor) and weight.ndim == 2 and isinstance(bias, torch.Tensor) \
        and bias.shape == weight.shape[:1]


# --- The article's way, kept as the reference the tests compare against ------------------------


def article_layout(features: torch.Tensor) -> np.ndarray:
    """The article's reshaping of one image's hooked output: ``(1, K, h, w) -> (h, w, K)``.

    ``torch.squeeze(out_features, dim=0)`` then ``np.transpose(..., axes=(1, 2, 0))``.
    """
    f = torch.squeeze(features.detach().cpu(), dim=0)  # (1, K, h, w) -> (K, h, w)
    return np.transpose(f.numpy(), axes=(1, 2, 0))  # (K, h, w) -> (h, w, K)


def article_cam_numpy(features_hwk: np.ndarray, weight_k: np.ndarray) -> np.ndarray:
    """The article's CAM for one image: ``np.dot`` of an ``(h, w, K)`` array with a ``(K,)`` vector.

    ``np.dot`` contracts the last axis of the first argument with the vector: for each cell,
    $\\sum_k A_k(x, y) w^c_k$ — Eq. 2 of Zhou et al., one image and one class at a time.
    """
    return np.dot(features_hwk, weight_k)  # (h, w, K) . (K,) -> (h, w)
