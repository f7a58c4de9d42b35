"""Tiny seeded fixtures shared by the lessons: small enough that the whole suite runs on a laptop CPU.

The one-thread fixture that every test uses is in the root ``conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pneumonia_cam.steps.model import build_model


# --- lessons 01/02: model and fit loop -------------------------------------------------------------
@pytest.fixture
def tiny_resnet() -> torch.nn.Module:
    """ResNet-18 with the article's 2-class log-softmax head, random init (seed 0), eval mode."""
    torch.manual_seed(0)
    return build_model("resnet18", weights="none").eval()


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """(4, 3, 32, 32) standard-normal images, seed 0: enough to run a ResNet end to end."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g)


def _toy_split(n: int, seed: int) -> TensorDataset:
    """A learnable 2-class set: class 1 images carry a bright square, class 0 do not. (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 2  # balanced: 0, 1, 0, 1, ...
    x[y == 1, :, 8:20, 8:20] += 2.0  # the "lesion"
    return TensorDataset(x, y)


@pytest.fixture
def toy_loaders() -> dict[str, DataLoader]:
    """Seeded train (16 images, shuffled with its own generator) and val (8 images) loaders."""
    return {
        "train": DataLoader(_toy_split(16, 1), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(0)),
        "val": DataLoader(_toy_split(8, 2), batch_size=8),
    }


# --- lesson 03: CAM (hook, weighted sum, zoom, Grad-CAM) -------------------------------------------
# These build torchvision networks directly (weights=None, nothing downloaded): the CAM modules take
# any GAP + linear classifier with a ``layer4`` and an ``fc = Sequential(Linear, LogSoftmax)``.
class TinyCamNet(nn.Module):
    """The smallest network with the article's layout: conv block -> GAP -> Linear -> LogSoftmax.

    ``layer4`` (conv stride 4 + ReLU) plays ResNet's last block: (B, 3, H, W) -> (B, K, H/4, W/4).
    """

    def __init__(self, k: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        self.layer4 = nn.Sequential(nn.Conv2d(3, k, 3, stride=4, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(k, num_classes), nn.LogSoftmax(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.layer4(x)  # (B, 3, H, W) -> (B, K, h, w)
        return self.fc(torch.flatten(self.avgpool(a), 1))  # (B, K, h, w) -> (B, K) -> (B, C)


@pytest.fixture
def cam_cnn() -> nn.Module:
    """TinyCamNet, seed 0, eval mode, float32."""
    torch.manual_seed(0)
    return TinyCamNet().eval()


@pytest.fixture
def cam_resnet18_f64() -> nn.Module:
    """torchvision ResNet-18 (weights=None, seed 0) with the article's head, eval mode, float64.

    The head bias is set to distinct non-zero values so that identities involving it can fail.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Sequential(nn.Linear(512, 2), nn.LogSoftmax(dim=1))
    with torch.no_grad():
        model.fc[0].bias.copy_(torch.tensor([0.3, -0.2]))
    return model.double().eval()


@pytest.fixture
def cam_images_f64() -> torch.Tensor:
    """(2, 3, 64, 64) float64 standard-normal images, seed 0 (ResNet-18 -> 2x2 layer4 maps)."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
