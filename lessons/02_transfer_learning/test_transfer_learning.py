"""Lesson 02, transfer learning: the article's model recipe, pinned.

A frozen ImageNet ResNet with a new log-softmax head; what "frozen" has to mean; where the weights come
from without a network connection.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.model import build_model, count_parameters
from pneumonia_cam.support.weights import (
    WeightsUnavailableError,
    expected_weights_file,
    imagenet_weights,
)

# The functions under test: the package's, or yours with `--student` (lessons/02_transfer_learning/exercises.py).
ex = exercise_impl("02_transfer_learning")


@pytest.mark.exercise("replace_head")
def test_frozen_resnet152_trains_exactly_4098_parameters():
    # What build_model("resnet152", freeze_backbone=True) does once the weights are loaded.
    model = ex.replace_head(torchvision.models.resnet152(weights=None), 2, freeze_backbone=True)
    assert count_parameters(model) == 2 * 2048 + 2 == 4098
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.0.weight", "fc.0.bias"]
    # The whole network: torchvision's published count for ResNet-152 (60,192,808) includes ImageNet's
    # 1000-class head, 2048 * 1000 + 1000 numbers; ours has 4,098 instead: 58,147,906 in all.
    published = torchvision.models.ResNet152_Weights.IMAGENET1K_V1.meta["num_params"]
    assert count_parameters(model, trainable_only=False) == published - (2048 * 1000 + 1000) + 4098


@pytest.mark.exercise("replace_head")
def test_unfrozen_model_trains_everything():
    model = ex.replace_head(torchvision.models.resnet18(weights=None), 2, freeze_backbone=False)
    assert count_parameters(model) == count_parameters(model, trainable_only=False)


@pytest.mark.exercise("replace_head")
def test_head_is_linear_then_log_softmax(tiny_images):
    torch.manual_seed(0)
    model = ex.replace_head(torchvision.models.resnet18(weights=None)).eval()
    assert isinstance(model.fc[0], nn.Linear) and model.fc[0].weight.shape == (2, 512)
    assert isinstance(model.fc[1], nn.LogSoftmax)
    with torch.no_grad():
        log_p = model(tiny_images)  # (B, 2)
    # The head outputs log-probabilities: exponentiated they are probabilities that sum to 1.
    p = log_p.double().exp()
    assert (log_p <= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_nll_of_log_softmax_equals_cross_entropy_of_logits():
    """Library behaviour (PyTorch), the reason for the article's head: NLLLoss on log-softmax outputs
    is CrossEntropyLoss on the logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    nll = nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), y)
    ce = nn.CrossEntropyLoss()(logits, y)
    torch.testing.assert_close(nll, ce, rtol=1e-12, atol=1e-12)
    # Hand-computed case: logits (0, 0) -> p = 1/2 -> loss log 2.
    torch.testing.assert_close(nn.NLLLoss()(torch.log_softmax(torch.zeros(1, 2), 1), torch.tensor([1])),
                               torch.log(torch.tensor(2.0)))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BatchNorm running_mean/var/num_batches_tracked) of the backbone."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _steps(model: nn.Module, images: torch.Tensor, set_mode) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        set_mode(model)
        loss = nn.NLLLoss()(model(images), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.exercise("train_mode")
def test_frozen_backbone_stays_frozen_with_train_mode(tiny_images):
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", freeze_backbone=True)
    before, head_before = _snapshot(model), model.fc[0].weight.clone()
    _steps(model, tiny_images, ex.train_mode)
    after = _snapshot(model)
    # Weights *and* BatchNorm statistics are bit-identical; only the head moved.
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.fc[0].weight)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # frozen BN layers are kept in eval mode
    assert model.fc.training


def test_article_model_train_drifts_batchnorm_statistics(tiny_images):
    """The article's model.train(): requires_grad=False does not stop BatchNorm buffer updates.

    Library behaviour (PyTorch), shown as the positive control for the train_mode test above."""
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", freeze_backbone=True)
    before = _snapshot(model)
    _steps(model, tiny_images, lambda m: m.train())
    after = _snapshot(model)
    drifted = [k for k in before if k.endswith("running_mean") and not torch.equal(before[k], after[k])]
    assert drifted, "expected model.train() to update BatchNorm running means"
    # ...while every learnable backbone weight is still untouched: the drift is in buffers only.
    weights = [k for k, _ in model.named_parameters() if not k.startswith("fc.")]
    assert all(torch.equal(before[k], after[k]) for k in weights)


@pytest.mark.exercise("train_mode")
def test_train_mode_trains_batchnorm_of_an_unfrozen_model():
    model = build_model("resnet18", weights="none", freeze_backbone=False)
    ex.train_mode(model)
    assert all(m.training for m in model.modules())


def test_pretrained_true_is_imagenet1k_v1():
    from torchvision.models import ResNet18_Weights, ResNet152_Weights

    assert imagenet_weights("resnet152") is ResNet152_Weights.IMAGENET1K_V1
    assert imagenet_weights("resnet18") is ResNet18_Weights.IMAGENET1K_V1
    # torchvision's DEFAULT is a *different* (V2) recipe for the bigger ResNets: we do not use it.
    assert ResNet152_Weights.DEFAULT is not ResNet152_Weights.IMAGENET1K_V1


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test loudly."""
    def boom(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)


def test_imagenet_weights_load_from_torch_home_without_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = expected_weights_file("resnet18")
    assert expected == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    # Stand-in for the real ImageNet file: a random-init torchvision ResNet-18 (1000-class fc).
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None)
    expected.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), expected)

    torch.manual_seed(0)  # a different init, so equality below proves the file was loaded
    model = build_model("resnet18", weights="imagenet", freeze_backbone=True)
    for k, v in reference.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.fc[0].weight.shape == (2, 512)  # the new head, not ImageNet's 1000 classes


def test_missing_imagenet_weights_is_one_clear_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("resnet152", weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet152-394f9c45.pth") in msg
    assert "--weights none" in msg and "--weights PATH" in msg


def test_weights_path_for_another_arch_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="resnet34"):
        build_model("resnet34", weights=path)


def test_weights_path_loads_backbone(tmp_path):
    torch.manual_seed(5)
    source = build_model("resnet18", weights="none")
    path = tmp_path / "mine.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", weights=path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert not torch.equal(model.fc[0].weight, source.fc[0].weight)  # the head is always new


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("vgg16")
