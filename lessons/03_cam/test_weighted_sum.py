"""Lesson 03, step 2: the weighted sum (``pneumonia_cam.steps.weighted_sum``), pinned against the article's
NumPy code and against the definition of the logit, in float64."""

import numpy as np
import pytest
import torch

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.weighted_sum import (
    article_cam_numpy,
    article_layout,
    cam_from_model,
    normalize_cam,
)

# The functions under test: the package's, or yours with `--student` (lessons/03_cam/exercises.py).
ex = exercise_impl("03_cam")

TOL = 1e-10  # float64: the two computations differ only in summation order


@pytest.mark.exercise("class_activation_map")
def test_hand_computed_two_channel_2x2():
    """M(x, y) = sum_k w_k A_k(x, y) by hand: A_1 = [[1, 2], [3, 4]], A_2 = [[0, 1], [1, 0]],
    w = (2, -1)  ->  M = [[2*1 - 0, 2*2 - 1], [2*3 - 1, 2*4 - 0]] = [[2, 3], [5, 8]]."""
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([[2.0, -1.0], [0.5, 0.5]], dtype=torch.float64)  # row 0 is the class we want
    expected = np.array([[2.0, 3.0], [5.0, 8.0]])
    np.testing.assert_array_equal(article_cam_numpy(article_layout(f[None]), w[0].numpy()), expected)
    np.testing.assert_array_equal(ex.class_activation_map(f[None], w, 0)[0].numpy(), expected)
    # with the bias b_0 = 1 added to every cell, the mean is the logit: (2+3+5+8)/4 + 1 = 5.5
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert ex.class_activation_map(f[None], w, 0, bias=b).mean().item() == 5.5


@pytest.mark.exercise("class_activation_map")
def test_batched_torch_cam_equals_article_numpy_per_image():
    """(B, K, h, w) x (C, K) in one batched matmul == the article's np.dot, image by image, any class each."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(5, 2048, 7, 7, generator=g, dtype=torch.float64)  # ResNet-152 layer4 sizes
    weight = torch.randn(2, 2048, generator=g, dtype=torch.float64)
    classes = torch.tensor([0, 1, 1, 0, 1])
    batched = ex.class_activation_map(feats, weight, classes)  # (5, 7, 7)
    assert batched.shape == (5, 7, 7) and batched.dtype == torch.float64
    for b in range(5):
        ref = article_cam_numpy(article_layout(feats[b : b + 1]), weight[classes[b]].numpy())
        assert np.abs(batched[b].numpy() - ref).max() <= TOL


@torch.no_grad()
@pytest.mark.exercise("class_activation_map")
def test_cam_mean_plus_bias_is_the_logit_for_every_class_and_image(cam_resnet18_f64):
    """CAM-sum-vs-logit on a 7x7 map: mean_{x,y} M_c(x, y) + b_c = z_c, exactly (GAP is linear)."""
    model = cam_resnet18_f64
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with LayerActivations(model.layer4) as acts, LayerActivations(model.fc[0]) as head:
        log_probs = model(x)  # (2, 2)
    logits = head.features  # (2, 2): the Linear's output, before LogSoftmax
    assert acts.features.shape == (2, 512, 7, 7)
    W, b = model.fc[0].weight, model.fc[0].bias
    for c in range(2):
        cam = ex.class_activation_map(acts.features, W, c)  # (2, 7, 7), no bias
        assert (cam.mean((1, 2)) + b[c] - logits[:, c]).abs().max() <= TOL
        with_bias = ex.class_activation_map(acts.features, W, c, bias=b)  # bias in every cell
        assert (with_bias.mean((1, 2)) - logits[:, c]).abs().max() <= TOL
        assert ((with_bias - cam) - b[c]).abs().max() <= TOL  # every cell, not b_c h w in one of them
    # the head's LogSoftmax: log p_c = z_c - log sum_j exp(z_j)
    assert (log_probs - (logits - torch.logsumexp(logits, 1, keepdim=True))).abs().max() <= TOL


@torch.no_grad()
@pytest.mark.exercise("class_activation_map")
def test_cam_from_model_maps_the_models_prediction(cam_resnet18_f64, cam_images_f64):
    model, x = cam_resnet18_f64, cam_images_f64
    cams, log_probs = cam_from_model(model, x, with_bias=True)
    pred = log_probs.argmax(1)
    with LayerActivations(model.layer4) as acts, LayerActivations(model.fc[0]) as head:
        model(x)
    expected_logit = head.features.gather(1, pred[:, None])[:, 0]
    assert (cams.mean((1, 2)) - expected_logit).abs().max() <= TOL
    # class_idx=None inside class_activation_map recomputes the same prediction from the features
    fc = model.fc[0]
    torch.testing.assert_close(ex.class_activation_map(acts.features, fc.weight, None, fc.bias), cams)
    # the default (with_bias=False) is the paper's and the article's bias-free map: shifted by b_c
    plain = ex.class_activation_map(acts.features, fc.weight, pred)
    assert ((cams - plain) - fc.bias[pred].view(-1, 1, 1)).abs().max() <= TOL


@pytest.mark.exercise("class_activation_map")
def test_class_idx_int_tensor_and_dtype():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    w32 = torch.randn(2, 4, generator=g)  # float32 parameters, float64 features
    out = ex.class_activation_map(f, w32, 1)
    assert out.dtype == torch.float64  # the features' dtype wins (the cast of w is exact)
    torch.testing.assert_close(out, ex.class_activation_map(f, w32, torch.tensor([1, 1, 1])))
    assert not torch.allclose(out, ex.class_activation_map(f, w32, 0))


@pytest.mark.parametrize(
    "features, weight, class_idx, bias",
    [
        (torch.zeros(2, 4, 3), torch.zeros(2, 4), 0, None),  # features not 4-D
        (torch.zeros(2, 4, 3, 3), torch.zeros(2, 5), 0, None),  # K mismatch
        (torch.zeros(2, 4, 3, 3), torch.zeros(2, 4), 2, None),  # class out of range
        (torch.zeros(2, 4, 3, 3), torch.zeros(2, 4), torch.tensor([0, 1, 1]), None),  # B mismatch
        (torch.zeros(2, 4, 3, 3), torch.zeros(2, 4), 0, torch.zeros(3)),  # bias not (C,)
    ],
)
@pytest.mark.exercise("class_activation_map")
def test_bad_arguments_raise(features, weight, class_idx, bias):
    with pytest.raises(ValueError):
        ex.class_activation_map(features, weight, class_idx, bias)


def test_normalize_cam_relu_minmax_and_constant_maps():
    cam = torch.tensor([[[-2.0, 0.0], [1.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]], [[-1.0, -2.0], [-3.0, -4.0]]])
    before = cam.clone()
    out = normalize_cam(cam)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.0], [1 / 3, 1.0]]))  # ReLU, then / 3
    assert torch.equal(out[1], torch.zeros(2, 2))  # constant: no peak, no division by zero
    assert torch.equal(out[2], torch.zeros(2, 2))  # no positive evidence at all
    assert torch.isfinite(out).all() and out.shape == cam.shape
    # normalization returns a new tensor: the raw map (negative cells included) is left as it was
    assert torch.equal(cam, before)


def test_a_constant_shift_does_not_vanish_under_normalize_cam():
    """The ReLU comes before the min-max, so adding a constant (such as the bias b_c) moves where it
    cuts: [-1, 0, 1, 2] -> ReLU [0, 0, 1, 2] -> [0, 0, 1/2, 1], but [0, 1, 2, 3] -> [0, 1/3, 2/3, 1]."""
    cam = torch.tensor([[[-1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(normalize_cam(cam), torch.tensor([[[0.0, 0.0], [0.5, 1.0]]], dtype=torch.float64))
    torch.testing.assert_close(normalize_cam(cam + 1),
                               torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]], dtype=torch.float64))


@torch.no_grad()
@pytest.mark.exercise("class_activation_map")
def test_cam_from_model_default_is_bias_free_and_removes_its_hook(cam_cnn):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with LayerActivations(cam_cnn.layer4) as acts:
        log_probs = cam_cnn(x)
    cams, lp = cam_from_model(cam_cnn, x)
    torch.testing.assert_close(lp, log_probs)
    expected = ex.class_activation_map(acts.features, cam_cnn.fc[0].weight, log_probs.argmax(1))
    torch.testing.assert_close(cams, expected)
    assert len(cam_cnn.layer4._forward_hooks) == 0


def test_normalize_cam_is_scale_free():
    """Min-max does not care about the map's scale: tiny (1e-15) and huge (1e12) maps keep their
    shape, and a huge constant map still becomes zeros."""
    cam = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], dtype=torch.float64)
    for scale in (1e-15, 1.0, 1e12):
        torch.testing.assert_close(normalize_cam(cam * scale), cam / 4)
    assert torch.equal(normalize_cam(torch.full((1, 2, 2), 3e9)), torch.zeros(1, 2, 2))
