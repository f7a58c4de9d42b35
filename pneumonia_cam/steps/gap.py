r"""Global average pooling: the article's "why ResNet" section.

The article picks a ResNet because its last convolutional block is followed by a **global average
pool (GAP)** and a single linear layer, and that wiring is what makes a Class Activation Map possible
(Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).

Let $A_k(x, y)$ be channel $k$ of the last convolutional feature map ($k = 1 \dots K$, on an
$h \times w$ grid; $K = 512$ and $h = w = 7$ for ResNet-18 at 224 px). GAP replaces each channel by
its spatial mean,

$$
F_k = \frac{1}{h w} \sum_{x, y} A_k(x, y),
$$

and the linear head turns the $K$ means into one score per class $c$ with weights $w^c_k$ and bias
$b_c$:

$$
z_c = \sum_k w^c_k F_k + b_c .
$$

Because both steps are linear, the sum over $k$ and the mean over $(x, y)$ can be swapped, which is
the whole trick behind CAM (lesson 03):

$$
z_c = \frac{1}{h w} \sum_{x, y} \underbrace{\sum_k w^c_k A_k(x, y)}_{M_c(x, y)} + b_c .
$$

GAP also keeps the head tiny. A dense layer on the flattened $K \times h \times w$ map needs
$C \cdot K h w + C$ parameters; GAP + linear needs $C \cdot K + C$: $hw = 49$ times fewer weights at
224 px, and it works at any input size because the pool does not care how big $h \times w$ is.
"""

from __future__ import annotations

import torch


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """Average every channel over its spatial grid ($F_k$ above).

    Identical to ``nn.AdaptiveAvgPool2d(1)`` followed by ``flatten(1)``, which is what torchvision's
    ResNet does in ``model.avgpool`` + ``torch.flatten`` (lesson 01 pins both equalities).

    Args:
        x: feature maps of shape (B, K, h, w).

    Returns:
        Tensor of shape (B, K): one mean per image and channel.
    """
    if x.dim() != 4:
        raise ValueError(f"expected feature maps of shape (B, K, h, w), got shape {tuple(x.shape)}")
    return x.mean(dim=(2, 3))  # (B, K, h, w) -> (B, K)


def dense_head_params(channels: int, height: int, width: int, num_classes: int = 2) -> int:
    """Parameters of a linear layer on the *flattened* feature map: $C \\cdot K h w + C$.

    Args:
        channels: K, feature channels (2048 for ResNet-50/101/152).
        height: h of the feature grid (7 at 224 px).
        width: w of the feature grid.
        num_classes: C.
    """
    return num_classes * channels * height * width + num_classes


def gap_head_params(channels: int, num_classes: int = 2) -> int:
    """Parameters of GAP followed by a linear layer: $C \\cdot K + C$ (GAP itself has none)."""
    return num_classes * channels + num_classes
