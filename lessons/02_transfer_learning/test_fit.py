"""Lesson 02, the fit loop: what the article's ``train_model`` does, and where ours deliberately differs.

The reference is the article's loop written out plainly in float64 (Adam, StepLR, NLLLoss, best epoch
kept), with the scheduler stepped after the optimizer; ``fit`` runs in float32 and must agree with it
to 1e-5.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps import fit as fit_mod
from pneumonia_cam.steps.fit import FitConfig, fit
from pneumonia_cam.steps.model import build_model
from pneumonia_cam.support import runtime
from pneumonia_cam.support.checkpoint import load_checkpoint, save_checkpoint

CPU32 = {"device": "cpu", "precision": "fp32"}

# The functions under test: the package's, or yours with `--student` (lessons/02_transfer_learning/exercises.py).
ex = exercise_impl("02_transfer_learning")


@pytest.fixture
def student_loop(monkeypatch, judged):
    """``fit`` with the exercise's ``train_one_epoch`` and ``evaluate`` in place of its own (the same
    functions in a normal run): the tests below then judge them by what ``fit`` computes. Under
    ``--student`` each such test runs once per exercise, the other one the package's (``judged``)."""
    e = ex.judging(judged)
    monkeypatch.setattr(fit_mod, "train_one_epoch", e.train_one_epoch)
    monkeypatch.setattr(fit_mod, "evaluate", e.evaluate)


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", weights="none")


# --------------------------------------------------------------------------------------------------
# The reference: the article's loop on a linear head over fixed features, in float64
# --------------------------------------------------------------------------------------------------
def _features(n: int, seed: int, flip: bool = False) -> TensorDataset:
    """(n, 8) standard-normal "GAP features"; label 1 where x0 + 0.5 x1 > 0 (0 there with ``flip``)."""
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    y = ((x[:, 0] + 0.5 * x[:, 1] > 0) != flip).long()
    return TensorDataset(x, y)


def _head_loaders(train: TensorDataset, val: TensorDataset, dtype: torch.dtype) -> dict[str, DataLoader]:
    """Batches of 8, train shuffled by a generator seeded 0: both loops see the same batches."""
    cast = lambda ds: TensorDataset(ds.tensors[0].to(dtype), ds.tensors[1])  # noqa: E731
    return {"train": DataLoader(cast(train), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
            "val": DataLoader(cast(val), batch_size=8)}


def _head(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 2), nn.LogSoftmax(dim=1))


def _article_loop(model, loaders, epochs, lr, step_size, gamma, weight_decay, class_weights):
    """The article's ``train_model``, plainly, in float64. Returns (history, best epoch); ``model``
    ends with the best epoch's weights."""
    criterion = nn.NLLLoss(weight=class_weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=False)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    history, best = [], (-1.0, float("-inf"), 0, None)  # (val acc, -val loss, epoch, weights)
    for epoch in range(1, epochs + 1):
        lr_now = optimizer.param_groups[0]["lr"]
        loss_sum, n = 0.0, 0
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
        scheduler.step()
        with torch.no_grad():
            x, y = (torch.cat(t) for t in zip(*loaders["val"]))
            log_p = model(x)
            val_loss = nn.functional.nll_loss(log_p, y).item()  # unweighted, as fit reports it
            val_acc = (log_p.argmax(1) == y).double().mean().item()
        history.append({"epoch": epoch, "lr": lr_now, "train_loss": loss_sum / n, "val_loss": val_loss,
                        "val_acc": val_acc})
        if (val_acc, -val_loss) > best[:2]:
            best = (val_acc, -val_loss, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[3])
    return history, best[2]


def _fit_and_reference(val: TensorDataset):
    recipe = dict(epochs=4, lr=0.05, step_size=2, gamma=0.5, weight_decay=0.01)
    weights = (2.0, 1.0)
    train = _features(32, seed=1)
    ours = _head()
    state = fit(ours, _head_loaders(train, val, torch.float32), FitConfig(**recipe, class_weights=weights, **CPU32))
    ref = _head().double()
    history, best_epoch = _article_loop(ref, _head_loaders(train, val, torch.float64), **recipe,
                                        class_weights=torch.tensor(weights, dtype=torch.float64))
    return ours, state, ref, history, best_epoch


@pytest.mark.exercise("train_one_epoch", "evaluate")
def test_fit_matches_the_articles_loop_in_float64(student_loop):
    """Class weights, weight decay, StepLR and the batch order all enter every number compared here."""
    ours, state, ref, history, best_epoch = _fit_and_reference(_features(16, seed=2))
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]
    for got, want in zip(state["history"], history):
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12)
        assert got["val_acc"] == want["val_acc"]
        for k in ("train_loss", "val_loss"):
            assert got[k] == pytest.approx(want[k], abs=1e-5), (got["epoch"], k)
    assert state["best"]["epoch"] == best_epoch
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5, msg=name)


@pytest.mark.exercise("train_one_epoch", "evaluate")
def test_best_weights_are_chosen_on_validation(student_loop, judged):
    """Validation labels follow the training rule reversed, so validation accuracy falls as training
    succeeds: the best epoch is an early one, and keeping the last epoch would fail here."""
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    ours, state, ref, history, best_epoch = _fit_and_reference(_features(16, seed=2, flip=True))
    assert best_epoch < 4  # the scenario does what it says
    assert state["best"]["epoch"] == best_epoch
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5, msg=name)
    # The returned model holds the best epoch's weights, and they reproduce its validation score.
    again = e.evaluate(ours, _head_loaders(_features(32, 1), _features(16, 2, flip=True), torch.float32)["val"])
    assert again["acc"] == state["best"]["val_acc"] == history[best_epoch - 1]["val_acc"]


class Sentinel(Dataset):
    """A test split that fails the moment anything reads it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise AssertionError("fit() read the test split")


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every backbone parameter and buffer (BatchNorm running statistics included), copied."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.exercise("train_one_epoch")
def test_train_one_epoch_trains_the_head_and_keeps_frozen_batchnorm_frozen(toy_loaders):
    """One epoch on a frozen ResNet: the head moves; the backbone's weights *and* BatchNorm statistics
    do not (the epoch must use train_mode, not model.train()); the returned loss is per image."""
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", freeze_backbone=True)
    ref = copy.deepcopy(model)
    before, head = _backbone_state(model), model.fc[0].weight.clone()
    toy_loaders["train"].generator.manual_seed(0)
    opt = torch.optim.Adam(model.fc.parameters(), lr=1e-2)
    out = ex.train_one_epoch(model, toy_loaders["train"], nn.NLLLoss(), opt, torch.device("cpu"))
    after = _backbone_state(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert not torch.equal(head, model.fc[0].weight)
    # The reference epoch, written out: same batches, same steps; loss and accuracy are per image.
    toy_loaders["train"].generator.manual_seed(0)
    ref_opt = torch.optim.Adam(ref.fc.parameters(), lr=1e-2)
    loss_sum, correct = 0.0, 0
    for xb, yb in toy_loaders["train"]:
        ref.eval().fc.train()  # frozen BatchNorm in eval mode, the head in train mode
        log_p = ref(xb)
        loss = nn.functional.nll_loss(log_p, yb)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        loss_sum, correct = loss_sum + loss.item() * len(yb), correct + (log_p.argmax(1) == yb).sum().item()
    assert out["n"] == 16 and out["acc"] == correct / 16
    assert out["loss"] == pytest.approx(loss_sum / 16, abs=1e-6)
    torch.testing.assert_close(model.fc[0].weight, ref.fc[0].weight, rtol=0, atol=1e-6)


@pytest.mark.exercise("evaluate")
def test_evaluate_is_inference_only_and_per_image(toy_loaders):
    """``evaluate`` on a model left in train mode: eval mode is its job (no BatchNorm update, running
    statistics used), and with uneven batches (3 + 3 + 2) its loss is the mean over images."""
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none").train()
    x, y = toy_loaders["val"].dataset.tensors  # (8, 3, 32, 32), (8,)
    loader = DataLoader(toy_loaders["val"].dataset, batch_size=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = ex.evaluate(model, loader)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        log_p = model.eval()(x).double()  # (8, 2): running statistics, one batch
    assert out["n"] == 8 and out["probs"].shape == (8, 2) and out["y_true"].tolist() == y.tolist()
    torch.testing.assert_close(torch.as_tensor(out["probs"]), log_p.exp(), rtol=0, atol=1e-5)
    assert out["loss"] == pytest.approx(nn.functional.nll_loss(log_p, y).item(), abs=1e-5)
    assert out["acc"] == (log_p.argmax(1) == y).double().mean().item()


def test_fit_never_touches_the_test_split(toy_loaders):
    loaders = dict(toy_loaders, test=DataLoader(Sentinel(), batch_size=2))
    state = fit(_tiny_model(), loaders, FitConfig(epochs=1, **CPU32))
    assert state["epoch"] == 1  # it trained, and never iterated loaders["test"]


def test_fit_steps_scheduler_after_optimizer_without_warnings(toy_loaders):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "lr_scheduler.step() before optimizer.step()" etc.
        state = fit(_tiny_model(), toy_loaders, FitConfig(epochs=3, lr=1e-3, step_size=2, gamma=0.1, **CPU32))
    # StepLR(2): epochs 1-2 at lr, epoch 3 at lr * gamma. The article's order would shift this by one.
    assert [round(r["lr"], 12) for r in state["history"]] == [1e-3, 1e-3, 1e-4]


def test_article_scheduler_order_warns():
    """PyTorch's behaviour, not ours: stepping the scheduler before any optimizer step warns."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4)
    with pytest.warns(UserWarning, match="optimizer.step"):
        sched.step()  # the article's order: scheduler before any optimizer step


@pytest.mark.exercise("train_one_epoch", "evaluate")
def test_fit_learns_the_toy_task(toy_loaders, student_loop):
    state = fit(_tiny_model(), toy_loaders, FitConfig(epochs=3, lr=1e-3, **CPU32))
    assert state["best"]["val_acc"] == 1.0  # the bright square is easy


def test_fit_is_reproducible_on_cpu(toy_loaders):
    def run():
        toy_loaders["train"].generator.manual_seed(0)
        model = _tiny_model()
        fit(model, toy_loaders, FitConfig(epochs=2, **CPU32))
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_saved_state_equals_an_uninterrupted_run(toy_loaders, tmp_path):
    def fresh():
        toy_loaders["train"].generator.manual_seed(0)
        torch.manual_seed(0)
        return build_model("resnet18", weights="none")

    full = fit(fresh(), toy_loaders, FitConfig(epochs=3, step_size=1, **CPU32))

    # Stop after epoch 2, round-trip the state through a checkpoint file (weights_only load)...
    saved = tmp_path / "last.pt"
    fit(fresh(), toy_loaders, FitConfig(epochs=2, step_size=1, **CPU32),
        on_epoch_end=lambda s: save_checkpoint(saved, s))
    torch.manual_seed(999)  # ...scramble every RNG, as a new process would...
    toy_loaders["train"].generator.manual_seed(999)
    resumed = fit(fresh(), toy_loaders, FitConfig(epochs=3, step_size=1, **CPU32),
                  resume=load_checkpoint(saved))  # ...and finish.

    assert resumed["history"] == full["history"]
    assert resumed["best"]["epoch"] == full["best"]["epoch"]
    assert all(torch.equal(resumed["model"][k], full["model"][k]) for k in full["model"])


def test_bf16_autocast_rounds_the_forward_and_keeps_fp32_weights():
    """The same head trained in fp32 and under bf16 autocast: close (bf16 keeps 8 bits of mantissa),
    not equal (the matmuls really ran in bf16), and the weights stay fp32."""
    train, val = _features(32, seed=1), _features(16, seed=2)
    runs = {}
    for precision in ("fp32", "bf16"):
        head = _head()
        runs[precision] = fit(head, _head_loaders(train, val, torch.float32),
                              FitConfig(epochs=2, lr=0.05, device="cpu", precision=precision))
    bf16, fp32 = runs["bf16"], runs["fp32"]
    assert bf16["precision"] == "bf16" and bf16["model"]["0.weight"].dtype == torch.float32
    losses = [(a["train_loss"], b["train_loss"]) for a, b in zip(fp32["history"], bf16["history"])]
    assert all(abs(a - b) < 0.02 for a, b in losses)
    assert any(a != b for a, b in losses)


@pytest.mark.parametrize("has_units, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_follows_the_hardware(monkeypatch, has_units, expected):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: has_units)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice stands
    with pytest.raises(ValueError, match="fp16"):
        runtime.resolve_precision("fp16", torch.device("cpu"))
