"""The article's training recipe, the article's way, against ours: same images, same epochs.

Tutorial section: *Transfer learning* and *Training*. Both runs train the 4,098-parameter head of a
frozen ResNet-152 at 224 px on the same phantom images (24 train, 8 val, 256 px PNGs) for the same
10 epochs -- the article's schedule -- with the same :func:`pneumonia_cam.steps.fit.fit` loop:

* **article**: fp32, contiguous layout, the article's augmenting train transforms, every image sent
  through the whole backbone in every epoch (train *and* the per-epoch validation);
* **ours**: the backbone's pooled features of train and val computed once
  (:func:`pneumonia_cam.extensions.feature_cache.cache_features`: bf16 autocast where supported, channels_last,
  inference_mode, eval transforms), then the head trained on them (``fit_cached``).

Cost model, with $N$ images, $E$ epochs, $t_{32}$ / $t_{16}$ a forward pass per image in fp32 / bf16
and $t_h$ the head's cost per image (forward, backward, Adam; ~1e-6 of a forward):

$$
T_\\text{article} = E N (t_{32} + t_h), \\qquad T_\\text{ours} = N t_{16} + E N t_h, \\qquad
\\frac{T_\\text{article}}{T_\\text{ours}} \\approx E \\, \\frac{t_{32}}{t_{16}} \\quad (t_h \\ll t_{16} / E).
$$

The ratio grows linearly with the number of epochs until $E t_h$ catches up with $t_{16}$ (tens of
thousands of epochs). The run measures 10 real epochs (few images, so that it fits the suite's time
budget; the cost per image does not depend on how many there are). ``extra_info`` also holds the
measured components (``article_epoch_s``, ``extract_s``, ``head_epoch_s``, ``ours_fixed_s``) and the
ratios they *predict* for 1, 3, 10 and 30 epochs (``ratio_model_E*``): the model's value at 10
epochs should match the measured ratio, and the others show the growth -- predictions from
measured parts, not measurements.

Random-init weights (``weights="none"``): the cost of a forward pass does not depend on the values.
Normal run: ResNet-18, 32 px, 8 + 4 images, 2 epochs, untimed.
"""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch

from pneumonia_cam.extensions.feature_cache import cache_features, feature_loaders, fit_cached
from pneumonia_cam.steps import data
from pneumonia_cam.steps.fit import FitConfig, fit
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support.phantoms import PhantomConfig, generate
from pneumonia_cam.support.runtime import resolve_precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]


@pytest.fixture(scope="module")
def setting(tmp_path_factory, bench_enabled):
    """The phantom root and the run's sizes: arch, image side, epochs, batch, train/val counts."""
    if bench_enabled:
        s = dict(arch="resnet152", size=224, epochs=10, batch=16, n_train=24, n_val=8, phantom=256)
    else:
        s = dict(arch="resnet18", size=32, epochs=2, batch=4, n_train=8, n_val=4, phantom=64)
    cfg = PhantomConfig(size=s["phantom"], n_train=s["n_train"], n_val=s["n_val"], n_test=2)
    return generate(tmp_path_factory.mktemp("recipe"), cfg, progress=False), s


@pytest.mark.parametrize("device", DEVICES)
def test_article_recipe_vs_cache_and_bf16(benchmark, compare, setting, device):
    root, s = setting
    torch.manual_seed(0)
    article_model = build_model(s["arch"], weights="none", freeze_backbone=True)
    ours_model = copy.deepcopy(article_model)
    parts: dict = {}

    def article():
        ds = data.make_datasets(root, size=s["size"], augment=True)  # the article's transforms
        loaders = data.make_loaders(ds, s["batch"], num_workers=0, device=device, seed=0)
        state = fit(article_model, {"train": loaders["train"], "val": loaders["val"]},
                    FitConfig(epochs=s["epochs"], device=device, precision="fp32", channels_last=False))
        parts["article_epoch_s"] = state["timing"]["epoch_seconds"]
        return state

    def ours():
        ds = data.make_datasets(root, size=s["size"], augment=False)
        t0 = time.perf_counter()
        sets = cache_features(ours_model, {"train": ds["train"], "val": ds["val"]}, batch_size=32,
                              device=device, precision="auto", channels_last=True)
        parts["extract_s"] = time.perf_counter() - t0
        state = fit_cached(ours_model, feature_loaders(sets, s["batch"], seed=0),
                           FitConfig(epochs=s["epochs"], device=device))
        parts["head_epoch_s"] = state["timing"]["epoch_seconds"]
        return state

    info = compare(article, ours, names=("article", "ours"), rounds=1, warmup=0, device=device)
    a_state, o_state = info["outputs"]["article"], info["outputs"]["ours"]
    assert len(a_state["history"]) == len(o_state["history"]) == s["epochs"]

    # Components, and what they predict for other epoch counts (E = 10 is measured).
    # Article: all of its time scales with E. Besides the epochs fit times (train + val passes),
    # each epoch copies the whole model's state twice for the best/last snapshots (2 x 60 M
    # numbers for ResNet-152); the only fixed part, scanning 32 file names, takes milliseconds.
    # Ours: extraction (once) + a small fixed part + E head epochs (its snapshots are 4,098 numbers).
    E, n = s["epochs"], s["n_train"] + s["n_val"]
    a_epoch = info["article_s_median"] / E  # per epoch, all included
    a_timed = statistics.mean(parts["article_epoch_s"])  # the part fit's epoch timer sees
    h_epoch = statistics.mean(parts["head_epoch_s"])
    o_fixed = info["ours_s_median"] - parts["extract_s"] - sum(parts["head_epoch_s"])

    def predicted(epochs: int) -> float:
        return epochs * a_epoch / (o_fixed + parts["extract_s"] + epochs * h_epoch)

    extra = {
        "epochs_measured": E, "images_per_epoch": n, "arch": s["arch"], "size": s["size"],
        "precision_ours": resolve_precision("auto", torch.device(device)),
        "article_epoch_s": a_epoch, "article_epoch_timed_s": a_timed,
        "extract_s": parts["extract_s"], "head_epoch_s": h_epoch, "ours_fixed_s": o_fixed,
        "article_s_per_image_epoch": a_epoch / n, "ours_extract_s_per_image": parts["extract_s"] / n,
        **{f"ratio_model_E{e}": predicted(e) for e in (1, 3, 10, 30)},
        "article_val_acc": a_state["history"][-1]["val_acc"], "ours_val_acc": o_state["history"][-1]["val_acc"],
    }
    benchmark.extra_info.update(extra)
    print(f"article epoch {a_epoch:.2f} s ({a_epoch / n:.3f} s/image), ours: extraction {parts['extract_s']:.2f} s "
          f"({parts['extract_s'] / n:.3f} s/image, {extra['precision_ours']}), head epoch {h_epoch * 1e3:.1f} ms; "
          f"measured ratio at {E} epochs {info['ratio']:.2f}; cost model at 1/3/10/30 epochs: "
          + " / ".join(f"{predicted(e):.1f}" for e in (1, 3, 10, 30)))
