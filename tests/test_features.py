"""The feature cache (pneumonia_cam.extensions.feature_cache): training the head on cached backbone features is the
same computation as the article's on-the-fly loop with a frozen backbone and no augmentation.

Tiny setup: the 64 px phantom set of tests/conftest.py (train 16, val 8, test 8) read at 32 px, a
ResNet-18 with weights=None and a frozen backbone, fp32, batch 4 (so an epoch has several steps and
the shuffled order matters).
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from pneumonia_cam import train
from pneumonia_cam.extensions.feature_cache import (
    AugmentedViews,
    backbone_features,
    cache_features,
    feature_loaders,
    fit_cached,
)
from pneumonia_cam.extensions.map_model import load_model
from pneumonia_cam.steps import data
from pneumonia_cam.steps.fit import FitConfig, evaluate, fit
from pneumonia_cam.steps.model import build_model

SIZE, BATCH, EPOCHS = 32, 4, 3


@pytest.fixture
def datasets(tiny_kaggle_root):
    """Train read through the eval transforms (augment=False): the cache's input pipeline."""
    return data.make_datasets(tiny_kaggle_root, size=SIZE, augment=False)


@pytest.fixture
def frozen_model():
    torch.manual_seed(0)
    return build_model("resnet18", weights="none", freeze_backbone=True)


def test_backbone_features_are_exactly_the_heads_input():
    # float64: the identity model.fc(F(x)) == model(x) holds to rounding, not approximately.
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none").double().eval()
    head = model.fc
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = backbone_features(model, x)  # (2, 3, 64, 64) -> (2, 512)
        assert f.shape == (2, 512)
        torch.testing.assert_close(model.fc(f), model(x), rtol=0, atol=1e-12)
        # F is the spatial mean of layer4's output (the GAP of lesson 01), here a 2x2 grid.
        a = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
        torch.testing.assert_close(f, a.mean((2, 3)), rtol=0, atol=1e-12)
    assert model.fc is head  # the head was swapped out and put back, same object


def test_cached_training_equals_on_the_fly_training(datasets, frozen_model):
    """Same seed, same batch order, fp32: the head weights agree to 1e-5 and so do the metrics."""
    on_the_fly, cached = frozen_model, copy.deepcopy(frozen_model)
    head, initial = cached.fc, cached.fc[0].weight.detach().clone()

    loaders = data.make_loaders(datasets, BATCH, num_workers=0, seed=0)
    state_a = fit(on_the_fly, loaders, FitConfig(epochs=EPOCHS, step_size=2, device="cpu", precision="fp32"))

    sets = cache_features(cached, datasets, device="cpu", precision="fp32", channels_last=False)
    assert set(sets) == {"train", "val", "test"} and sets["train"].tensors[0].shape == (16, 512)
    floaders = feature_loaders(sets, BATCH, seed=0)
    state_b = fit_cached(cached, floaders, FitConfig(epochs=EPOCHS, step_size=2, device="cpu"))

    # The trained head is the model's own fc: the CAM reads its weights from cached.fc[0].
    assert cached.fc is head
    for name in ("weight", "bias"):
        a, b = getattr(on_the_fly.fc[0], name), getattr(cached.fc[0], name)
        assert (a - b).abs().max().item() <= 1e-5, name
    assert (cached.fc[0].weight - initial).abs().max() > 1e-3  # it did train

    assert [h["epoch"] for h in state_a["history"]] == [h["epoch"] for h in state_b["history"]] == [1, 2, 3]
    for ha, hb in zip(state_a["history"], state_b["history"]):
        assert ha["train_acc"] == hb["train_acc"] and ha["val_acc"] == hb["val_acc"] and ha["lr"] == hb["lr"]
        assert abs(ha["train_loss"] - hb["train_loss"]) <= 1e-5 and abs(ha["val_loss"] - hb["val_loss"]) <= 1e-5
    assert state_a["best"]["epoch"] == state_b["best"]["epoch"]

    # Test metrics: whole model on images vs head on cached test features.
    ev_a = evaluate(on_the_fly, loaders["test"], "cpu", "fp32")
    ev_b = evaluate(cached.fc, floaders["test"], "cpu", "fp32")
    assert ev_a["acc"] == ev_b["acc"] and (ev_a["y_true"] == ev_b["y_true"]).all()
    assert abs(ev_a["probs"] - ev_b["probs"]).max() <= 1e-5

    # The returned states are whole-model state dicts: a fresh model loads them strictly.
    fresh = build_model("resnet18", weights="none", freeze_backbone=True)
    fresh.load_state_dict(state_b["model"])  # after the last epoch
    fresh.load_state_dict(state_b["best"]["model"])  # the best epoch's, which the model holds
    torch.testing.assert_close(fresh.fc[0].weight, cached.fc[0].weight, rtol=0, atol=0)


def test_training_without_the_cache_really_differs_under_augmentation(tiny_kaggle_root, frozen_model):
    """The counterpart: with the article's random rotation/flip, F(x) of a train image changes per
    pass, which is exactly what a one-vector-per-image cache cannot represent."""
    ds = data.make_datasets(tiny_kaggle_root, size=SIZE, augment=True)["train"]
    frozen_model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        f1 = backbone_features(frozen_model, torch.stack([ds[i][0] for i in range(4)]))
        f2 = backbone_features(frozen_model, torch.stack([ds[i][0] for i in range(4)]))
    assert (f1 - f2).abs().max() > 1e-3


def test_extraction_leaves_the_model_as_it_was(datasets, frozen_model):
    before = {k: v.clone() for k, v in frozen_model.state_dict().items()}
    head = frozen_model.fc
    frozen_model.train()
    cache_features(frozen_model, {"val": datasets["val"]}, device="cpu", precision="fp32")
    assert frozen_model.training and frozen_model.fc is head
    for k, v in frozen_model.state_dict().items():  # BatchNorm running stats included
        assert torch.equal(v, before[k]), k


def test_trainable_backbone_is_refused(datasets):
    model = build_model("resnet18", weights="none", freeze_backbone=False)
    with pytest.raises(ValueError, match="frozen backbone"):
        cache_features(model, datasets, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="frozen backbone"):
        fit_cached(model, {}, FitConfig(epochs=1))


def test_disk_cache_is_reused_and_invalidated_by_weights_and_files(tmp_path, tiny_kaggle_root, frozen_model):
    root = tmp_path / "data"
    shutil.copytree(tiny_kaggle_root, root)
    ds = {"val": data.make_datasets(root, size=SIZE, augment=False)["val"]}
    lines: list[str] = []
    kw = dict(device="cpu", precision="fp32", channels_last=False, cache_dir=tmp_path / "cache", log=lines.append)

    first = cache_features(frozen_model, ds, **kw)["val"].tensors[0]
    second = cache_features(frozen_model, ds, **kw)["val"].tensors[0]
    assert "computed" in lines[0] and "loaded" in lines[1]
    assert torch.equal(first, second) and len(list((tmp_path / "cache").glob("features-val-*.pt"))) == 1

    # A changed BatchNorm buffer changes F(x) without touching any parameter: a new key.
    with torch.no_grad():
        frozen_model.bn1.running_mean += 0.5
    third = cache_features(frozen_model, ds, **kw)["val"].tensors[0]
    assert "computed" in lines[2] and not torch.equal(first, third)

    # A re-exported image (new modification time) invalidates too.
    path = ds["val"].samples[0][0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache_features(frozen_model, ds, **kw)
    assert "computed" in lines[3]
    # The head does not enter the key: training it does not throw the cache away.
    with torch.no_grad():
        frozen_model.fc[0].weight += 1.0
    cache_features(frozen_model, ds, **kw)
    assert "loaded" in lines[4]


def test_augmented_views_are_seeded_and_do_not_touch_the_callers_rng(tiny_kaggle_root, frozen_model):
    ds = data.make_datasets(tiny_kaggle_root, size=SIZE, augment=True)
    rng = torch.get_rng_state()
    a = cache_features(frozen_model, {"train": ds["train"]}, views=2, seed=3, device="cpu", precision="fp32")["train"]
    assert torch.equal(torch.get_rng_state(), rng)
    b = cache_features(frozen_model, {"train": ds["train"]}, views=2, seed=3, device="cpu", precision="fp32")["train"]
    assert isinstance(a, AugmentedViews) and a.features.shape == (2, 16, 512)
    assert torch.equal(a.features, b.features)  # same seed, same views
    assert (a.features[0] - a.features[1]).abs().max() > 1e-3  # two different augmentations
    x, y = a[5]
    assert x.shape == (512,) and int(y) == int(a.labels[5])
    assert any(torch.equal(x, a.features[v, 5]) for v in range(2))


def test_fit_cached_resumes_from_a_whole_model_state(datasets, frozen_model):
    sets = cache_features(frozen_model, datasets, device="cpu", precision="fp32", channels_last=False)
    start = copy.deepcopy(frozen_model)
    saved: list[dict] = []
    torch.manual_seed(1)
    full = fit_cached(frozen_model, feature_loaders(sets, BATCH), FitConfig(epochs=2, device="cpu"),
                      on_epoch_end=lambda s: saved.append(copy.deepcopy(s)))
    assert "layer1.0.conv1.weight" in saved[0]["model"]  # whole-model states reach the callback
    torch.manual_seed(1)
    resumed = fit_cached(start, feature_loaders(sets, BATCH), FitConfig(epochs=2, device="cpu"), resume=saved[0])
    torch.testing.assert_close(resumed["model"]["fc.0.weight"], full["model"]["fc.0.weight"], rtol=0, atol=0)
    assert resumed["history"] == full["history"]


# --------------------------------------------------------------------------------------------------
# The command line: python -m pneumonia_cam.train --freeze-backbone --cache-features
# --------------------------------------------------------------------------------------------------
def test_cli_cache_features_gives_the_same_run_as_on_the_fly_also_when_resumed(tiny_train_args, tmp_path, capsys):
    """Without augmentation, a cached run (killed after epoch 1 and resumed) and the on-the-fly run
    write the same metrics and the same head; a trainable backbone is refused with one line."""
    args = [*tiny_train_args, "--freeze-backbone", "--no-augment"]
    assert train.main([*args, "--name", "fly"]) == 0
    assert train.main([*args, "--name", "cached", "--cache-features", "--epochs", "1"]) == 0
    assert train.main([*args, "--name", "cached", "--cache-features", "--resume"]) == 0  # to 2 epochs
    runs = tmp_path / "runs"
    a, b = (json.loads((runs / n / "metrics.json").read_text()) for n in ("fly", "cached"))
    assert a["best_epoch"] == b["best_epoch"] and b["epochs_trained"] == 2
    for split in ("val", "test"):
        assert a[split]["accuracy"] == b[split]["accuracy"] and abs(a[split]["loss"] - b[split]["loss"]) <= 1e-5
    fly, _ = load_model(runs / "fly" / "best.pt")
    cached, _ = load_model(runs / "cached" / "best.pt")  # a whole-model checkpoint, loaded strictly
    assert (fly.fc[0].weight - cached.fc[0].weight).abs().max() <= 1e-5

    capsys.readouterr()
    assert train.main([*tiny_train_args, "--name", "bad", "--cache-features"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache-features needs --freeze-backbone" in err[0]
