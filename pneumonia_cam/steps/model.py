r"""The model: the article's "model architecture" section (transfer learning with a torchvision ResNet).

The article takes an ImageNet-trained ResNet-152, freezes every layer, and swaps the 1000-class
ImageNet head for a two-class one whose output is a log-probability per class:

    model.fc = nn.Sequential(nn.Linear(2048, 2), nn.LogSoftmax(dim=1))

That head is kept exactly, because lesson 03 reads the CAM weights from it by name:
``model.fc[0].weight`` is the $C \times K$ matrix $w^c_k$ and ``model.fc[0].bias`` the $b_c$ of

$$
\log p(c \mid x) = \operatorname{log\,softmax}_c\Big(\sum_k w^c_k F_k + b_c\Big),
\qquad F_k = \frac{1}{hw}\sum_{x,y} A_k(x,y),
$$

with $A_k$ the output of ``model.layer4`` (the hooked layer) and $F_k$ its global average pool
(``model.avgpool``, see :mod:`pneumonia_cam.steps.gap`).

Where we differ from the article, and why:

* ``pretrained=True`` is deprecated in torchvision. The weights it used to load are
  ``ResNet152_Weights.IMAGENET1K_V1``; ``weights="imagenet"`` gets that file (for every ResNet,
  ``IMAGENET1K_V1``) from torchvision's cache, or downloads it there
  (:func:`pneumonia_cam.support.weights.load_backbone`, which a reader of the article can skip).
* "Frozen" means frozen: ``requires_grad=False`` stops the optimizer, but ``model.train()`` would
  still let every BatchNorm layer update its running mean and variance on each batch. Use
  :func:`train_mode` instead of ``model.train()`` (lesson 02 pins the difference).

Beyond the article, :mod:`pneumonia_cam.extensions.map_model` changes this model for localization
(a head that pools the class map, a dilated ``layer4``); the article's model is built here, unchanged.
"""

from __future__ import annotations

import os

import torchvision
from torch import nn

from pneumonia_cam.support.weights import load_backbone

#: The architectures the package supports (all torchvision ResNets with a GAP + linear head).
ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_model(
    arch: str = "resnet18",
    weights: str | os.PathLike = "none",
    freeze_backbone: bool = False,
    num_classes: int = 2,
    offline: bool = False,
    progress: bool = True,
) -> nn.Module:
    """Build a torchvision ResNet with the article's log-softmax head.

    Args:
        arch: one of :data:`ARCHS`.
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` file: cached, or downloaded into
            torchvision's cache), ``"none"`` (random init), or a path to a state-dict file: a
            torchvision-format backbone (its ``fc`` keys, whatever their shape, are ignored) or one of
            our ``.pt`` checkpoints (``"model"``).
        freeze_backbone: set ``requires_grad=False`` on everything except the new head (the article).
            Pair it with :func:`train_mode` so BatchNorm statistics stay frozen too.
        num_classes: C, the number of output classes (2: NORMAL, PNEUMONIA).
        offline: never download; a missing ImageNet file is then an error (so is
            ``PNEUMONIA_CAM_OFFLINE=1``).
        progress: show the download's progress bar on stderr.

    Returns:
        The model, in train mode, on the CPU. ``model.fc[0]`` is the ``nn.Linear`` that holds the
            head's weight (C, K) and bias (C,), ``model.fc[1]`` the ``LogSoftmax``; the forward pass
            returns log-probabilities of shape (B, C).

    Raises:
        WeightsUnavailableError: weights are missing (offline), their download failed, or they do
            not fit ``arch`` (:class:`pneumonia_cam.support.weights.WeightsUnavailableError`).
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    # weights=None: torchvision builds the random-init network and touches no file and no network.
    model = torchvision.models.get_model(arch, weights=None)
    load_backbone(model, arch, weights, offline, progress)  # the article's pretrained=True
    return replace_head(model, num_classes, freeze_backbone)


def replace_head(model: nn.Module, num_classes: int = 2, freeze_backbone: bool = False) -> nn.Module:
    """The article's transfer-learning step, in place: freeze the backbone, then swap in a new head.

    ``model.fc = nn.Sequential(nn.Linear(K, C), nn.LogSoftmax(dim=1))``, with $K$ =
    ``model.fc.in_features``. With ``freeze_backbone`` only the head's $C K + C$ parameters train.

    Args:
        model: a torchvision ResNet (its ``fc`` is an ``nn.Linear`` with ``in_features`` = K).
        num_classes: C.
        freeze_backbone: set ``requires_grad=False`` on every parameter that exists before the swap.

    Returns:
        ``model`` itself, with the new head.
    """
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad_(False)
    in_features = model.fc.in_features  # K: 512 (ResNet-18/34) or 2048 (ResNet-50/101/152)
    # New modules default to requires_grad=True, so after freezing only these C*K + C numbers train
    # (4,098 for ResNet-152).
    model.fc = nn.Sequential(
        nn.Linear(in_features, num_classes),  # (B, K) -> (B, C)   the CAM weights w^c_k, b_c
        nn.LogSoftmax(dim=1),  # (B, C) -> (B, C)   log-probabilities, for NLLLoss
    )
    return model


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that frozen BatchNorm layers stay in eval mode.

    In train mode a BatchNorm layer normalizes with the *batch* statistics and updates its running
    mean/variance buffers: buffers are not parameters, so ``requires_grad=False`` does not protect
    them. A BatchNorm layer whose affine parameters are all frozen is treated as frozen and put back in
    eval mode, so it uses (and keeps) the running statistics it was pretrained with. Works for any
    module (a plain head without BatchNorm simply goes to train mode).
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters; 4,098 for a frozen ResNet-152 with the 2-class head."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
