"""Lesson 03, comparison: Grad-CAM (``pneumonia_cam.extensions.gradcam``) at ``layer4`` of a GAP + linear
network is CAM / (h*w); on the log-probability it is a contrast map; it works on a frozen model."""

import pytest
import torch

from pneumonia_cam.extensions.gradcam import grad_cam
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import class_activation_map, normalize_cam

TOL = 1e-10


def _features_logits(model, x):
    with torch.no_grad(), LayerActivations(model.layer4) as acts, LayerActivations(model.fc[0]) as head:
        model(x)
    return acts.features, head.features  # (B, K, h, w), (B, C)


def _freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("class_idx", [0, 1, None])
def test_gradcam_on_the_logit_is_cam_over_hw(cam_resnet18_f64, cam_images_f64, class_idx):
    model, x = cam_resnet18_f64, cam_images_f64
    feats, logits = _features_logits(model, x)
    h, w = feats.shape[-2:]
    target = logits.argmax(1) if class_idx is None else class_idx
    cam = class_activation_map(feats, model.fc[0].weight, target)  # (B, h, w), bias-free
    g = grad_cam(model, model.layer4, x, class_idx, output="logit")
    assert g.shape == cam.shape == (2, 2, 2)
    assert (g - cam / (h * w)).abs().max() <= TOL  # before ReLU
    assert (normalize_cam(g) - normalize_cam(cam)).abs().max() <= TOL  # after ReLU + min-max


def test_gradcam_on_the_logprob_is_the_scaled_contrast_map(cam_cnn):
    """d log p_c = (1 - p_c)(d z_c - d z_other) for two classes: L = (1 - p_c)/(hw) (M_c - M_other).

    A head-only identity, so the tiny CNN (in float64) is enough."""
    model = cam_cnn.double()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    feats, logits = _features_logits(model, x)
    h, w = feats.shape[-2:]
    p = logits.softmax(1)  # (B, 2)
    W = model.fc[0].weight
    for c in (0, 1):
        contrast = class_activation_map(feats, W, c) - class_activation_map(feats, W, 1 - c)
        expected = (1 - p[:, c]).view(-1, 1, 1) * contrast / (h * w)
        g = grad_cam(model, model.layer4, x, c, output="logprob")
        assert (g - expected).abs().max() <= TOL
    # not the same as the logit version: the other class's map enters
    assert (grad_cam(model, model.layer4, x, 1, "logprob") - grad_cam(model, model.layer4, x, 1)).abs().max() > 1e-6


def test_gradcam_works_with_a_frozen_backbone(cam_resnet18_f64, cam_images_f64):
    """The article freezes everything but the head; here even the head is frozen, and x plain.
    The map is still CAM / (h w), computed from the hooked features without any gradient."""
    model, x = cam_resnet18_f64, cam_images_f64
    feats, _ = _features_logits(model, x)
    h, w = feats.shape[-2:]
    expected = class_activation_map(feats, model.fc[0].weight, 1) / (h * w)  # (B, h, w)
    _freeze(model)
    got = grad_cam(model, model.layer4, x, 1)
    assert got.shape == expected.shape and (got - expected).abs().max() <= TOL
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient was touched
    assert len(model.layer4._forward_hooks) == 0 and len(model.fc[0]._forward_hooks) == 0


def test_a_tensor_hook_on_a_frozen_output_fails(cam_resnet18_f64, cam_images_f64):
    """Why gradient-w.r.t.-the-activation matters: the popular recipe registers a gradient hook on
    the layer's output, which a frozen network never makes require grad.

    Library behaviour (PyTorch autograd), not our code: it shows the failure grad_cam avoids."""
    model = _freeze(cam_resnet18_f64)

    def tensor_hook(module, inputs, output):
        output.register_hook(lambda grad: None)

    handle = model.layer4.register_forward_hook(tensor_hook)
    try:
        with pytest.raises(RuntimeError, match="does not require grad|doesn't require grad"):
            model(cam_images_f64)
    finally:
        handle.remove()


def test_gradcam_float32_tiny_cnn_matches_cam(cam_cnn):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    feats, _ = _features_logits(cam_cnn, x)
    cam = class_activation_map(feats, cam_cnn.fc[0].weight, 1)
    with torch.no_grad():  # callers inside no_grad (as the CLI is) are fine too
        g = grad_cam(_freeze(cam_cnn), cam_cnn.layer4, x, 1)
    torch.testing.assert_close(g * 64, cam, rtol=1e-5, atol=1e-5)  # h*w = 8*8


def test_bad_output_raises(cam_cnn):
    with pytest.raises(ValueError):
        grad_cam(cam_cnn, cam_cnn.layer4, torch.zeros(1, 3, 16, 16), output="prob")


def test_logprob_gradcam_degenerates_in_float32_when_confident(cam_cnn):
    """With a margin of 30 logits, 1 - p_c is exactly 0 in float32 but p_other (~1e-13) is not:
    the log-prob map is then -p_other M_other / (hw), the other class's map upside down."""
    with torch.no_grad():
        cam_cnn.fc[0].bias.copy_(torch.tensor([0.0, 30.0]))  # class 1 wins by ~30 logits
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    feats, logits = _features_logits(cam_cnn, x)
    p = logits.softmax(1)
    assert (1 - p[:, 1] == 0).all() and (p[:, 0] > 0).all()
    g = grad_cam(cam_cnn, cam_cnn.layer4, x, 1, output="logprob")
    other = class_activation_map(feats, cam_cnn.fc[0].weight, 0)
    torch.testing.assert_close(g, -p[:, 0].view(-1, 1, 1) * other / 64, rtol=1e-4, atol=0)
    # after ReLU + min-max it is the negated other-class map, not the class-1 CAM
    mine = class_activation_map(feats, cam_cnn.fc[0].weight, 1)
    torch.testing.assert_close(normalize_cam(g), normalize_cam(-other), atol=1e-5, rtol=0)
    assert (normalize_cam(g) - normalize_cam(mine)).abs().max() > 0.1
