"""Lesson 02, the fit loop: what the article's ``fit`` does, and where ours deliberately differs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pneumonia_cam.checkpoint import load_checkpoint, save_checkpoint
from pneumonia_cam.fit import cpu_supports_bf16, evaluate, fit, resolve_precision
from pneumonia_cam.model import build_model


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", weights="none")


def test_a_few_steps_drive_the_loss_down(toy_loaders):
    model = _tiny_model()
    x, y = next(iter(toy_loaders["val"]))  # one fixed batch of 8
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        model.train()
        loss = nn.NLLLoss()(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


class Sentinel(Dataset):
    """A test split that fails the moment anything reads it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise AssertionError("fit() read the test split")


def test_fit_never_touches_the_test_split(toy_loaders):
    loaders = dict(toy_loaders, test=DataLoader(Sentinel(), batch_size=2))
    state = fit(_tiny_model(), loaders, epochs=1, precision="fp32", device="cpu")
    assert state["epoch"] == 1  # it trained, and never iterated loaders["test"]


def test_fit_steps_scheduler_after_optimizer_without_warnings(toy_loaders):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "lr_scheduler.step() before optimizer.step()" etc.
        state = fit(_tiny_model(), toy_loaders, epochs=3, lr=1e-3, step_size=2, gamma=0.1,
                    precision="fp32", device="cpu")
    # StepLR(2): epochs 1-2 at lr, epoch 3 at lr * gamma. The article's order would shift this by one.
    assert [round(r["lr"], 12) for r in state["history"]] == [1e-3, 1e-3, 1e-4]


def test_article_scheduler_order_warns():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4)
    with pytest.warns(UserWarning, match="optimizer.step"):
        sched.step()  # the article's order: scheduler before any optimizer step


def test_best_weights_are_chosen_on_validation(toy_loaders):
    model = _tiny_model()
    state = fit(model, toy_loaders, epochs=3, precision="fp32", device="cpu")
    accs = [(r["val_acc"], -r["val_loss"]) for r in state["history"]]
    best_epoch = 1 + max(range(3), key=lambda i: accs[i])
    assert state["best"]["epoch"] == best_epoch
    # The returned model holds the best epoch's weights, and they reproduce its validation score.
    for k, v in state["best"]["model"].items():
        assert torch.equal(model.state_dict()[k], v)
    again = evaluate(model, toy_loaders["val"])
    assert again["acc"] == state["best"]["val_acc"]
    assert again["loss"] == pytest.approx(state["best"]["val_loss"], rel=1e-6)


def test_fit_learns_the_toy_task(toy_loaders):
    state = fit(_tiny_model(), toy_loaders, epochs=3, lr=1e-3, precision="fp32", device="cpu")
    assert state["best"]["val_acc"] == 1.0  # the bright square is easy


def test_fit_is_reproducible_on_cpu(toy_loaders):
    def run():
        toy_loaders["train"].generator.manual_seed(0)
        model = _tiny_model()
        fit(model, toy_loaders, epochs=2, precision="fp32", device="cpu")
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_saved_state_equals_an_uninterrupted_run(toy_loaders, tmp_path):
    def fresh():
        toy_loaders["train"].generator.manual_seed(0)
        torch.manual_seed(0)
        return build_model("resnet18", weights="none")

    full = fit(fresh(), toy_loaders, epochs=3, step_size=1, precision="fp32", device="cpu")

    # Stop after epoch 2, round-trip the state through a checkpoint file (weights_only load)...
    saved = tmp_path / "last.pt"
    fit(fresh(), toy_loaders, epochs=2, step_size=1, precision="fp32", device="cpu",
        on_epoch_end=lambda s: save_checkpoint(saved, s))
    torch.manual_seed(999)  # ...scramble every RNG, as a new process would...
    toy_loaders["train"].generator.manual_seed(999)
    resumed = fit(fresh(), toy_loaders, epochs=3, step_size=1, precision="fp32", device="cpu",
                  resume=load_checkpoint(saved))  # ...and finish.

    assert resumed["history"] == full["history"]
    assert resumed["best"]["epoch"] == full["best"]["epoch"]
    assert all(torch.equal(resumed["model"][k], full["model"][k]) for k in full["model"])


def test_fit_trains_any_module_for_example_a_head_on_cached_features():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 16, generator=g)  # (N, K) pretend GAP features
    y = (feats[:, 0] > 0).long()
    ds = torch.utils.data.TensorDataset(feats, y)
    loaders = {"train": DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
               "val": DataLoader(ds, batch_size=32)}
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(16, 2), nn.LogSoftmax(dim=1))
    state = fit(head, loaders, epochs=8, lr=0.05, precision="fp32", device="cpu")
    assert state["best"]["val_acc"] >= 0.9


def test_class_weights_are_accepted(toy_loaders):
    state = fit(_tiny_model(), toy_loaders, epochs=1, class_weights=torch.tensor([3.0, 1.0]),
                precision="fp32", device="cpu")
    assert state["history"][0]["train_loss"] > 0


def test_bf16_autocast_trains_on_cpu(toy_loaders):
    state = fit(_tiny_model(), toy_loaders, epochs=1, precision="bf16", device="cpu")
    assert state["precision"] == "bf16"
    assert state["model"]["fc.0.weight"].dtype == torch.float32  # weights stay fp32 under autocast


def test_precision_auto_follows_the_hardware():
    expected = "bf16" if cpu_supports_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("fp16", torch.device("cpu"))
