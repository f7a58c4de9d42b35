"""bf16 autocast and channels_last change the rounding, not the answers: predictions and CAMs of a
briefly trained model agree with fp32.

Why a trained model: on a random-init network the two classes' logits are nearly equal and the
agreement of two argmaxes says little either way. Here the head of a frozen ResNet-18 (weights=None)
is trained for 60 cheap epochs on cached fp32 features of 128 phantoms at 128 px, and the agreement
is checked on those same 128 images. Fitting the batch it is tested on is deliberate: a random-init
backbone is a poor feature extractor and a head trained on it does not generalize to new images
(it predicts one class), while on its own training images it separates the classes with real
margins (asserted: both classes predicted, >= 85 % correct, median |logit margin| > 0.5; measured
~1.9, while bf16 moves a logit by ~0.1). The question is whether bf16 rounding moves a decision or
a map, and these are the margins of a model that has learned something.

Tolerances: argmax agreement >= 99 % of the 128-image batch (at most one flip), Pearson correlation of each
image's CAM (4x4 at 128 px, and upsampled to 128 px) >= 0.99 in bf16 vs fp32; fp32 channels_last vs
contiguous outputs within 1e-4 (same arithmetic, different summation order).

The last section pins the other fast path, reduced-scale JPEG decoding: geometry (never below the
network's input size) and closeness of the resulting network inputs to the full decode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from pneumonia_cam.extensions.feature_cache import cache_features, extract_features, feature_loaders, fit_cached
from pneumonia_cam.steps.fit import FitConfig
from pneumonia_cam.steps import data
from pneumonia_cam.support import runtime
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.hook import LayerActivations
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.steps.weighted_sum import class_activation_map
from pneumonia_cam.steps.zoom import upsample
from pneumonia_cam.support.images import draft_jpeg, load_image
from pneumonia_cam.support.phantoms import PhantomConfig, generate, image_rng, render_phantom

SIZE = 128  # 4x4 layer4 grid: a map with some spatial structure, still cheap

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model in eval mode, its 128 training images (128, 3, 128, 128), their labels (128,))."""
    root = generate(tmp_path_factory.mktemp("precision"), PhantomConfig(size=SIZE, n_train=128, n_val=2, n_test=2),
                    progress=False)
    ds = data.make_datasets(root, size=SIZE, augment=False)
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", freeze_backbone=True)
    sets = cache_features(model, ds, device="cpu", precision="fp32", channels_last=False)
    # Selected on the batch itself ("val" = train): the head that fits these images best.
    fit_cached(model, feature_loaders({"train": sets["train"], "val": sets["train"]}, 16),
               FitConfig(epochs=60, lr=3e-2, step_size=1000, device="cpu"))
    x = torch.stack([ds["train"][i][0] for i in range(len(ds["train"]))])  # (128, 3, 128, 128)
    return model.eval(), x, sets["train"].tensors[1]


def _run(model: torch.nn.Module, x: torch.Tensor, device: str, precision: str, channels_last: bool):
    """log-probs (B, C) and layer4 features (B, K, h, w), both fp32, under inference_mode."""
    model = model.to(device)
    x = x.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), LayerActivations(model.layer4) as acts, \
            runtime.autocast(torch.device(device), precision):
        log_p = model(x)  # (B, 3, H, W) -> (B, C)
    out = log_p.float().cpu(), acts.features.float().cpu()
    model.to("cpu", memory_format=torch.contiguous_format)  # leave the shared fixture as it was
    return out


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-map correlation of (B, ...) maps -> (B,)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _check_agreement(model, x, y, device):
    lp32, f32 = _run(model, x, device, "fp32", channels_last=False)
    lp16, f16 = _run(model, x, device, "bf16", channels_last=True)
    # A model that has learned something, with decisions not all at 0.5: a real test of whether
    # rounding flips them.
    margin = (lp32[:, 1] - lp32[:, 0]).abs()  # |logit difference| per image
    assert (lp32.argmax(1) == y).double().mean() >= 0.85
    assert margin.median() > 0.5 and len(set(lp32.argmax(1).tolist())) == 2
    agree = (lp32.argmax(1) == lp16.argmax(1)).double().mean().item()
    print(f"\n{device}: argmax agreement {agree:.1%}, max |logit diff| {(lp32 - lp16).abs().max():.4f}, "
          f"median |margin| {margin.median():.3f}, fp32 accuracy {(lp32.argmax(1) == y).double().mean():.1%}")
    assert agree >= 0.99, f"bf16 and fp32 predictions agree on {agree:.1%} only"

    # CAMs of the fp32-predicted class from each run's own layer4 features and the same head.
    cls, w = lp32.argmax(1), model.fc[0].weight.detach().cpu()
    cam32, cam16 = class_activation_map(f32, w, cls), class_activation_map(f16, w, cls)  # (B, 4, 4)
    assert cam32.shape == (len(x), SIZE // 32, SIZE // 32)
    r_raw, r_up = _pearson(cam32, cam16), _pearson(upsample(cam32, SIZE), upsample(cam16, SIZE))
    print(f"{device}: CAM correlation min {r_raw.min():.5f} (4x4), {r_up.min():.5f} (upsampled)")
    assert r_raw.min() >= 0.99 and r_up.min() >= 0.99


def test_bf16_channels_last_agrees_with_fp32_on_cpu(trained):
    _check_agreement(*trained, "cpu")


@pytest.mark.gpu
@needs_cuda
def test_bf16_channels_last_agrees_with_fp32_on_cuda(trained):
    _check_agreement(*trained, "cuda")


def test_channels_last_alone_changes_only_summation_order(trained):
    model, x, _ = trained
    a, fa = _run(model, x[:8], "cpu", "fp32", channels_last=False)
    b, fb = _run(model, x[:8], "cpu", "fp32", channels_last=True)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)


def test_bf16_cached_features_give_the_same_decisions(trained):
    """Our recipe extracts the cached features in bf16: the head decides the same on them."""
    model, x, _ = trained
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=32)
    decisions = {}
    for precision in ("fp32", "bf16"):
        f, _ = extract_features(model, loader, device="cpu", precision=precision, channels_last=precision == "bf16")
        with torch.inference_mode():
            decisions[precision] = model.fc(f).argmax(1)  # (B, K) -> (B, C) -> (B,)
    model.to(memory_format=torch.contiguous_format)
    assert (decisions["fp32"] == decisions["bf16"]).double().mean() >= 0.99


def test_auto_precision_uses_bf16_only_where_the_cpu_supports_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"  # the fallback
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"
    assert runtime.resolve_precision("fp32", cpu) == "fp32"  # an explicit choice is kept


# --------------------------------------------------------------------------------------------------
# The fast decode path: reduced-scale JPEG decoding (images.draft_jpeg) vs the full decode
# --------------------------------------------------------------------------------------------------
def _phantom_jpeg(path, w: int, h: int) -> None:
    """A phantom scaled to w x h with film grain, saved as a grayscale JPEG of quality 90."""
    ph = render_phantom(image_rng(0, "test", 1), 256, pneumonia=True)
    img = np.asarray(Image.fromarray(ph.image).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += np.random.default_rng(0).normal(0.0, 4.0, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(path, quality=90)


@pytest.mark.parametrize("w, h", [(2916, 2583), (1858, 1330), (1330, 1858), (896, 700), (447, 600), (300, 250)])
def test_draft_decodes_smaller_but_never_below_the_target(tmp_path, w, h):
    path = tmp_path / "x.jpeg"
    Image.new("L", (w, h), 128).save(path)  # flat: only the geometry matters here
    with Image.open(path) as img:
        scale = draft_jpeg(img, 224)
        size = img.size
    assert scale in (1, 2, 4, 8) and min(size) >= 224  # the Resize after it still shrinks
    assert scale == 8 or min(w, h) // (2 * scale) < 224  # and it is the largest such reduction
    assert load_image(path, draft_size=224).size == size
    assert load_image(tmp_path / "x.jpeg").size == (w, h)  # no draft_size: the full decode


def test_draft_is_a_no_op_for_png(tmp_path):
    Image.new("L", (1000, 900), 128).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", draft_size=224).size == (1000, 900)


@pytest.mark.parametrize("split", ["val", "train"])
def test_draft_decode_gives_nearly_the_same_network_input(tmp_path, split):
    """2,048 x 1,792 px decodes at 1/8 to 256 x 224, the tightest case above 224 px. Stated
    tolerance on the normalized (3, 224, 224) tensors (1 unit = 0.229 x 255 = 58 gray levels):
    mean |diff| <= 0.01 (0.6 gray levels; measured ~0.006), 99.9th percentile <= 0.15 (measured
    ~0.035 eval, ~0.12 train: the rotation resamples the lung edges)."""
    _phantom_jpeg(tmp_path / "x.jpeg", 2048, 1792)
    tf = make_transforms(224)[split]
    torch.manual_seed(0)  # the same random rotation and flip for both
    full = tf(load_image(tmp_path / "x.jpeg"))
    torch.manual_seed(0)
    fast = tf(load_image(tmp_path / "x.jpeg", draft_size=224))
    d = (full - fast).abs()
    assert d.mean() <= 0.01 and d.flatten().quantile(0.999) <= 0.15


def test_datasets_decode_at_reduced_scale(tiny_kaggle_root, tmp_path):
    """The datasets' loader decodes a 512 px JPEG at 1/8 (64 px, still >= the 32 px input)."""
    Image.new("L", (512, 512), 128).save(tmp_path / "big.jpeg")
    ds = data.make_datasets(tiny_kaggle_root, size=32)
    for split in ("train", "val", "test"):
        assert ds[split].loader(str(tmp_path / "big.jpeg")).size == (64, 64), split


def test_cpu_description_names_the_kind_and_its_bf16_units(monkeypatch):
    """What every reported timing carries: model, family/model numbers and the bf16 units, read from
    the first processor's block of /proc/cpuinfo."""
    import io

    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\ncpu family\t: 25\nmodel\t\t: 17\n"
               "flags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")
    monkeypatch.setattr(runtime, "open", lambda *a, **k: io.StringIO(cpuinfo), raising=False)
    assert runtime.cpu_description() == "AMD EPYC 9R14 (family 25, model 17), no AMX, AVX512-BF16"
    monkeypatch.setattr(runtime, "open", lambda *a, **k: io.StringIO(cpuinfo.replace("avx512_bf16", "amx_bf16")),
                        raising=False)
    assert runtime.cpu_description().endswith("AMX-BF16, no AVX512-BF16")
