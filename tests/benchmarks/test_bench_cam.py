"""What a Class Activation Map costs: beside one forward pass, against the article's NumPy loop,
and against Grad-CAM.

Tutorial section: *Class Activation Maps* (hook, weighted sum, zoom). The CAM of a batch is
$B \\times C \\times K \\times hw$ multiply-adds (ResNet-152 at 224 px: $16 \\times 2 \\times 2048 \\times
49 \\approx 3.2$ M) against $16 \\times 11.5$ GFLOPs for the forward pass that produces the features:
it should cost nothing measurable. Three ratios, each measured in one run (see ``conftest.py``):

* ``test_cam_overhead``: forward + hook + CAM + upsample + normalize vs the plain forward, ResNet-152,
  batch 16, 224 px, our inference settings (``inference_mode``, bf16 autocast where supported,
  channels_last). Goal <= 1.02. The noise of a shared machine is larger than 2 %, so the CAM step
  alone is also timed and ``1 + t_cam / t_forward`` reported beside the measured ratio.
* ``test_article_cam_vs_batched``: the article's per-image ``np.dot`` + ``scipy.ndimage.zoom`` vs one
  batched ``class_activation_map`` (one ``bmm``) + ``zoom.upsample`` (two interpolation matrices, with
  ``align_corners=True``, so both give the same maps, asserted), 64 images of (2048, 7, 7) features, in NCHW and in channels_last memory layout. Goal >= 20x.
  Also timed: the floor of any batched CAM (read the features once, write the maps once).
* ``test_cam_vs_gradcam``: Grad-CAM (forward with autograd on from ``layer4``, backward to it) vs CAM
  on the same batch and settings. Both maps normalize to the same picture (asserted).

Normal run: ResNet-18, 2 images of 64 px, one untimed round. CUDA variants skip without a GPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pneumonia_cam.extensions.gradcam import grad_cam
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.steps.weighted_sum import article_cam_numpy, article_layout, class_activation_map, normalize_cam
from pneumonia_cam.steps.zoom import upsample, zoom_article
from pneumonia_cam.support.runtime import autocast, resolve_precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]


@pytest.fixture(scope="module")
def batch(bench_enabled):
    """(model in eval mode, images, side): ResNet-152, 16 x 224 px when timed; tiny otherwise."""
    arch, n, size = ("resnet152", 16, 224) if bench_enabled else ("resnet18", 2, 64)
    torch.manual_seed(0)
    model = build_model(arch, weights="none", freeze_backbone=True).eval()  # weights do not change the cost
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, x, size


def _on(model: torch.nn.Module, x: torch.Tensor, device: str):
    """Model and input on ``device`` in channels_last, and the precision "auto" resolves to there."""
    dev = torch.device(device)
    model = model.to(dev, memory_format=torch.channels_last)
    return model, x.to(dev).contiguous(memory_format=torch.channels_last), dev, resolve_precision("auto", dev)


def _cam_pipeline(model, x, dev, precision, size):
    """Our CAM path: one forward with the hook, then CAM of the predicted class, upsampled, normalized."""
    with torch.inference_mode():
        with LayerActivations(model.layer4) as acts, autocast(dev, precision):
            log_p = model(x)  # (B, 3, S, S) -> (B, C)
        # The CAM in fp32 from the (bf16) features: 3 M multiply-adds, precision is free here.
        cams = class_activation_map(acts.features.float(), model.fc[0].weight, log_p.argmax(1))  # (B, h, w)
        return normalize_cam(upsample(cams, size))  # (B, h, w) -> (B, S, S) in [0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_cam_overhead(benchmark, compare, batch, device):
    model, x, size = batch
    model, x, dev, precision = _on(model, x, device)

    def plain():
        with torch.inference_mode(), autocast(dev, precision):
            return model(x)  # (B, 3, S, S) -> (B, C)

    def with_cam():
        return _cam_pipeline(model, x, dev, precision, size)

    info = compare(with_cam, plain, names=("forward_cam", "forward"), rounds=8, warmup=1, device=device)
    maps = info["outputs"]["forward_cam"]
    assert maps.shape == (x.shape[0], size, size) and 0 <= maps.min() and maps.max() <= 1

    # The CAM step alone on stored features: the overhead without the forward's noise.
    with torch.inference_mode(), LayerActivations(model.layer4) as acts, autocast(dev, precision):
        log_p = model(x)
    feats, cls = acts.features, log_p.argmax(1)
    reps = 20 if benchmark.enabled else 1
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(reps):
            out = normalize_cam(upsample(class_activation_map(feats.float(), model.fc[0].weight, cls), size))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        cam_s = (time.perf_counter() - t0) / reps
    assert out.shape == maps.shape
    benchmark.extra_info.update({"cam_step_s": cam_s, "ratio_from_components": 1 + cam_s / info["forward_s_median"],
                                 "precision": precision, "batch": x.shape[0], "size": size})
    print(f"CAM step alone {cam_s * 1e3:.2f} ms = {cam_s / info['forward_s_median']:.2e} of a forward "
          f"-> 1 + t_cam/t_fwd = {1 + cam_s / info['forward_s_median']:.5f} ({precision})")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_article_cam_vs_batched(benchmark, compare, bench_enabled, device, layout):
    """``layout``: the memory format of the hooked features. An fp32 NCHW model (the article's)
    delivers NCHW ``layer4`` output; a channels_last model (ours) delivers NHWC. Both ways get the
    same tensor."""
    n, k = (64, 2048) if bench_enabled else (4, 64)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, k, 7, 7, generator=g).relu()  # (B, K, 7, 7), like post-ReLU layer4 output
    if layout == "channels_last":
        feats = feats.contiguous(memory_format=torch.channels_last)  # same values, NHWC in memory
    weight = torch.randn(2, k, generator=g) / k**0.5  # (C, K)
    cls = torch.randint(0, 2, (n,), generator=g)  # (B,) the predicted classes
    feats_d, weight_d, cls_d = feats.to(device), weight.to(device), cls.to(device)
    w_np = weight.numpy()

    def article():
        maps = []
        for i in range(n):  # the article's loop: one image, one class at a time, in NumPy
            f = article_layout(feats_d[i:i + 1])  # (1, K, 7, 7) -> (7, 7, K), on the CPU
            cam = article_cam_numpy(f, w_np[cls[i]])  # (7, 7, K) . (K,) -> (7, 7)
            maps.append(zoom_article(cam, 32))  # (7, 7) -> (224, 224)
        return np.stack(maps)  # (B, 224, 224)

    def ours():
        with torch.inference_mode():
            cams = class_activation_map(feats_d, weight_d, cls_d)  # (B, K, 7, 7) -> (B, 7, 7)
            return upsample(cams, 224, align_corners=True).cpu()  # (B, 224, 224), result on the host

    info = compare(article, ours, names=("article", "batched"), rounds=8 if bench_enabled else 1, warmup=1,
                   device=device)
    a, b = info["outputs"]["article"], info["outputs"]["batched"].numpy()
    assert a.shape == b.shape == (n, 224, 224)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # the same maps (float32 summation order)

    # The floor of any batched CAM: read the features once, write the (B, 224, 224) maps once. Timed
    # right after the article's loop, as the batched path is, so that both find the caches alike.
    def floor():
        with torch.inference_mode():
            feats_d.sum()  # every feature read once
            return torch.empty(n, 224, 224, device=device).fill_(1.0).cpu()  # every output written once

    floors = []
    for _ in range(8 if bench_enabled else 1):
        article()
        t0 = time.perf_counter()
        floor()  # ends with a copy to the host: synchronized on a GPU
        floors.append(time.perf_counter() - t0)
    floor_s = float(np.median(floors))
    benchmark.extra_info.update({"images": n, "channels": k, "layout": layout, "floor_s_median": floor_s,
                                 "batched_over_floor": info["batched_s_median"] / floor_s})
    print(f"memory floor (read features + write maps) {floor_s * 1e3:.2f} ms: batched takes "
          f"{info['batched_s_median'] / floor_s:.1f}x the floor, the article {info['article_s_median'] / floor_s:.0f}x")


@pytest.mark.parametrize("device", DEVICES)
def test_cam_vs_gradcam(benchmark, compare, batch, device):
    model, x, size = batch
    model, x, dev, precision = _on(model, x, device)

    def cam():
        return _cam_pipeline(model, x, dev, precision, size)

    def gradcam():
        # No inference_mode: Grad-CAM needs autograd from layer4 on (frozen backbone: only the head's
        # few ops are recorded, and the backward stops at layer4's output).
        with autocast(dev, precision):
            maps = grad_cam(model, model.layer4, x, output="logit")  # (B, h, w)
        with torch.inference_mode():
            return normalize_cam(upsample(maps.detach().float(), size))

    info = compare(gradcam, cam, names=("gradcam", "cam"), rounds=4, warmup=1, device=device)
    a, b = info["outputs"]["gradcam"].flatten(1).double(), info["outputs"]["cam"].flatten(1).double()
    # Grad-CAM on the logit = CAM / (h w) before ReLU: the same normalized map, up to bf16 rounding.
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    assert corr.min() >= 0.99
    benchmark.extra_info.update({"map_correlation_min": corr.min().item(), "precision": precision})
