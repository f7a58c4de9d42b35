"""Lesson 02, write it yourself: the data pipelines, the frozen model with its new head, one epoch of
training and an evaluation pass.

Fill in each function below, then let the lesson's own tests judge your code:

    python -m pneumonia_cam.exercises start 02_transfer_learning     # -> my_exercises/02_transfer_learning.py
    pytest lessons/02_transfer_learning --student my_exercises

Each failing test names the exercise and repeats its hint; when every exercise passes, pytest says
so in one line. Read lessons/02_transfer_learning/README.md first. The answers are in
pneumonia_cam/steps/data.py, model.py and fit.py: try without them.

The tests run `fit` (pneumonia_cam/steps/fit.py) with *your* `train_one_epoch` and `evaluate` in
place of its own, and compare every epoch's numbers with the article's loop written out in float64.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import transforms

LESSON = "02_transfer_learning"  # tells `pytest --student` which lesson this file answers

# The statistics the ImageNet weights were trained with: inputs must be normalized the same way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_transforms(size: int = 224) -> dict[str, transforms.Compose]:
    """The article's three pipelines: ``{"train": ..., "val": ..., "test": ...}``.

    * train: ``Resize((size, size))``, ``RandomRotation(20)``, ``RandomHorizontalFlip()``,
      ``ToTensor()``, ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``;
    * val and test: ``Resize(size)``, ``CenterCrop(size)``, ``ToTensor()``, ``Normalize(...)``.

    Each maps a PIL image to a (3, size, size) float tensor with $\\hat x_c = (x_c - \\mu_c) / \\sigma_c$.

    Hint: Resize((s, s)) squashes to a square, Resize(s) scales the shorter side and keeps the aspect
    ratio; the eval pipelines then need CenterCrop(s) to be square, and every pipeline ends with Normalize.
    """
    raise NotImplementedError("exercise make_transforms: see lessons/02_transfer_learning/README.md, "
                              "'Step 1: load and preprocess'")


def replace_head(model: nn.Module, num_classes: int = 2, freeze_backbone: bool = False) -> nn.Module:
    """Freeze the backbone (optionally), then swap in the article's head, in place.

    ``model.fc = nn.Sequential(nn.Linear(K, C), nn.LogSoftmax(dim=1))`` with K = ``model.fc.in_features``.
    With ``freeze_backbone`` only the new head's $C K + C$ parameters train (4,098 for ResNet-152).

    Args:
        model: a torchvision ResNet.
        num_classes: C.
        freeze_backbone: ``requires_grad=False`` on every parameter that exists before the swap.

    Returns:
        ``model`` itself.

    Hint: Freeze first, swap second: a module created after the freeze has requires_grad=True, which
    is exactly what the head needs. Read K from the old fc before you replace it.
    """
    raise NotImplementedError("exercise replace_head: see lessons/02_transfer_learning/README.md, "
                              "'Step 2: transfer learning'")


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except that frozen BatchNorm layers stay in eval mode.

    A BatchNorm layer counts as frozen when it has parameters and none of them requires grad. In
    train mode it would normalize with batch statistics and update its running mean and variance
    (buffers, which ``requires_grad=False`` does not protect).

    Returns:
        ``model`` itself.

    Hint: Call model.train(), then walk model.modules() and put back in eval mode every
    nn.modules.batchnorm._BatchNorm whose own parameters (recurse=False) all have requires_grad False.
    """
    raise NotImplementedError("exercise train_mode: see lessons/02_transfer_learning/README.md, "
                              "'Step 2: transfer learning'")


def train_one_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, precision: str = "fp32", channels_last: bool = False,
                    progress: bool = False, desc: str = "train") -> dict:
    """One pass over ``loader`` with one optimizer step per batch.

    For each batch ``(x, y)`` of shapes (B, 3, H, W) and (B,): log-probabilities ``model(x)`` (B, C),
    ``loss = criterion(log_p, y)``, backward, step. The model must be put in training mode with your
    :func:`train_mode`, not ``model.train()``.

    Args:
        model, loader, criterion, optimizer: as built by ``fit``.
        device: where to move each batch.
        precision, channels_last, progress, desc: speed and display options; on the CPU in float32
            (what the tests use) you may ignore them.

    Returns:
        ``{"loss": mean loss per image, "acc": accuracy, "n": number of images}`` over the epoch.

    Hint: optimizer.zero_grad() before each backward, or the gradients of every batch add up; weight
    each batch's loss.item() by its size, so that the epoch's loss is a mean over images.
    """
    raise NotImplementedError("exercise train_one_epoch: see lessons/02_transfer_learning/README.md, "
                              "'Step 3: the fit loop'")


def evaluate(model: nn.Module, loader, device="cpu", precision: str = "fp32", channels_last: bool = False,
             progress: bool = False, desc: str = "eval") -> dict:
    """Forward the split that ``loader`` holds, in eval mode and without autograd.

    Args:
        model: returns log-probabilities (B, C).
        loader: yields ``(x, y)`` batches of one split (``fit`` passes the validation loader).
        device, precision, channels_last, progress, desc: as in :func:`train_one_epoch`.

    Returns:
        ``{"loss", "acc", "n", "y_true", "probs"}``: ``loss`` the mean negative log-likelihood per image
        (unweighted), ``acc`` the accuracy, ``n`` the number of images, ``y_true`` a (N,) int64 NumPy
        array and ``probs`` a (N, C) float64 NumPy array of probabilities, in the loader's order.

    Hint: model.eval() (BatchNorm must use, and keep, its running statistics) and torch.no_grad();
    sum nll_loss(..., reduction="sum") over the batches and divide by N at the end; probs = log_p.exp().
    """
    raise NotImplementedError("exercise evaluate: see lessons/02_transfer_learning/README.md, "
                              "'Step 3: the fit loop'")
