r"""The fit loop: the article's "train the model" step (its ``train_model``).

One epoch is a pass over the training split with an optimizer step after every batch, then a pass
over the validation split in inference mode. The loss is the negative log-likelihood of the true class
under the head's log-softmax output, optionally weighted per class ($w_c = 1$ unless
``class_weights``),

$$
\mathcal{L} = -\frac{\sum_{i=1}^{B} w_{y_i} \log p(y_i \mid x_i)}{\sum_{i=1}^{B} w_{y_i}},
$$

which is ``CrossEntropyLoss`` on the logits (lesson 02 pins that). Adam updates only the parameters
that require gradients (the head alone with a frozen backbone), and ``StepLR`` multiplies the learning
rate by $\gamma$ every ``step_size`` epochs. The article's ``train_model(model, criterion, optimizer,
scheduler, num_epochs)`` receives those three objects; :func:`fit` builds them from a
:class:`FitConfig`, because it also saves and restores them.

Where we differ from the article, and why:

* **Best epoch by validation, not test.** The article keeps the epoch with the best *test* accuracy
  and reports that accuracy, so the test split has chosen the model. :func:`fit` never reads
  ``loaders["test"]``; the caller evaluates the test split once, at the end.
* **scheduler.step() after optimizer.step()**, as PyTorch requires since 1.1; the article's order
  warns and skips the first learning rate.
* **Frozen BatchNorm stays frozen**: :func:`~pneumonia_cam.steps.model.train_mode` replaces
  ``model.train()``.
* **bf16 autocast** where the hardware has bf16 units (``precision="auto"``); weights, optimizer state
  and the loss stay fp32.
* **Resumable.** After every epoch the complete state (model, optimizer, scheduler, history,
  best-so-far, every RNG including the train loader's generator) goes to ``on_epoch_end``, and
  ``resume=`` continues from it. On CPU, the same seed and thread count give bit-identical weights;
  on CUDA only equal to rounding (cuDNN's algorithm choice, atomic adds in some backward kernels).

Under ``torchrun`` three calls into :mod:`pneumonia_cam.support.distributed` (``wrap``,
``finish_train_epoch``, ``gather_split``) make the same loop data-parallel; in one process they do
nothing. :func:`fit` trains any module that returns log-probabilities, e.g. a bare
``nn.Sequential(nn.Linear(K, 2), nn.LogSoftmax(1))`` head on cached features.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from pneumonia_cam.steps.model import train_mode
from pneumonia_cam.support import distributed
from pneumonia_cam.support.runtime import (
    autocast,
    capture_rng,
    resolve_device,
    resolve_precision,
    restore_rng,
    to_device,
)


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains: the article's Adam + StepLR recipe, and where it runs."""

    epochs: int = 10  # the article's num_epochs
    lr: float = 1e-3  # Adam's learning rate (the article: torch's default, 1e-3)
    step_size: int = 4  # StepLR: lr *= gamma every step_size epochs (the article: 4)
    gamma: float = 0.1  # StepLR's decay factor (the article: 0.1)
    weight_decay: float = 0.0  # Adam's L2 weight decay (the article: none)
    class_weights: Sequence[float] | torch.Tensor | None = None  # (C,) NLLLoss weights, e.g. inverse frequencies
    device: str | torch.device = "auto"  # "auto": CUDA if available, else the CPU
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (see support.runtime.resolve_precision)
    channels_last: bool = False  # NHWC memory format for model and inputs
    # False: this call's epochs are validated and logged but never kept as the best weights (a warm-up
    # whose validation runs at another input size than the one the model will be used at).
    select_best: bool = True
    total_epochs: int | None = None  # the run's length, for the "epoch 4/5" lines of a staged run; None: epochs


# --------------------------------------------------------------------------------------------------
# One pass over a split
# --------------------------------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, precision: str = "fp32", channels_last: bool = False,
                    progress: bool = False, desc: str = "train") -> dict:
    """One optimizer step per batch.

    Returns:
        ``{"loss", "acc", "n"}``: the epoch's mean loss and accuracy over its ``n`` images.
    """
    train_mode(model)  # not model.train(): frozen BatchNorm keeps its statistics
    total_loss, correct, n = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for x, y in bar:
        x, y = to_device(x, device, channels_last), y.to(device)  # (B, 3, H, W), (B,)
        with autocast(device, precision):
            log_p = model(x)  # (B, 3, H, W) -> (B, C)
        loss = criterion(log_p.float(), y)  # the loss in fp32 even under bf16 autocast
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * y.numel()
        correct += (log_p.argmax(dim=1) == y).sum().item()
        n += y.numel()
        bar.set_postfix(loss=f"{total_loss / n:.4f}", acc=f"{correct / n:.3f}")
    total_loss, correct, n = distributed.finish_train_epoch(model, [total_loss, correct, n])  # alone: unchanged
    n = int(n)
    return {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "n": n}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu", precision: str = "fp32",
             channels_last: bool = False, progress: bool = False, desc: str = "eval") -> dict:
    """Forward a whole split in eval mode without autograd.

    Returns:
        ``{"loss", "acc", "n", "y_true", "probs"}``: ``loss`` is the plain (unweighted) mean NLL,
            comparable across runs with different class weights; ``y_true`` is ``(N,)`` int64 and ``probs``
            ``(N, C)`` float64, in the loader's order.
    """
    device = torch.device(device)
    model.eval()  # BatchNorm uses running statistics; no buffer changes
    loss_sum, ys, probs = 0.0, [], []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        x, y = to_device(x, device, channels_last), y.to(device)
        with autocast(device, precision):
            log_p = model(x).float()  # (B, C)
        loss_sum += nn.functional.nll_loss(log_p, y, reduction="sum").item()
        ys.append(y.cpu())
        probs.append(log_p.exp().double().cpu())  # (B, C) probabilities, rows sum to 1
    y_true = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
    p = torch.cat(probs) if probs else torch.zeros((0, 2), dtype=torch.float64)
    y_true, p, loss_sum = distributed.gather_split(loader, y_true, p, loss_sum)  # torchrun: every shard
    y_true, p = y_true.numpy(), p.numpy()
    n = int(y_true.size)
    return {"loss": loss_sum / max(n, 1), "acc": float((p.argmax(1) == y_true).mean()) if n else float("nan"),
            "n": n, "y_true": y_true, "probs": p}


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
def make_adam(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam, fused into one kernel where this PyTorch supports it (CUDA; CPU since 2.4).

    The default Adam launches about ten small ops per parameter tensor and step; the fused kernel does
    the same update in one. Same algorithm, different rounding order.
    """
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):  # older torch or unsupported device/dtype
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(model: nn.Module, loaders: Mapping[str, Iterable], config: FitConfig | None = None, *,
        resume: dict | None = None, on_epoch_end: Callable[[dict], None] | None = None,
        log: Callable[[str], None] | None = None, progress: bool = False) -> dict:
    """Train ``model`` for ``config.epochs`` epochs and keep the weights of the best validation epoch.

    Args:
        model: returns log-probabilities (B, C); moved to ``config.device`` in place.
        loaders: like the article's ``dataloaders`` dict. ``loaders["train"]`` yields ``(x, y)``
            batches (if it has a ``generator``, its state is saved for resume); ``loaders["val"]``
            chooses the best epoch (accuracy, ties -> lower loss; only if ``config.select_best``). Any other key, ``"test"``
            included, is never read.
        config: the recipe (:class:`FitConfig`; its defaults are the article's).
        resume: a state previously passed to ``on_epoch_end`` (e.g. loaded from ``last.pt``); training
            continues up to ``config.epochs``.
        on_epoch_end: called after every epoch with the full state (see Returns), e.g. to save it.
        log: called with one summary line per epoch (e.g. ``print``).
        progress: show tqdm bars per epoch.

    Returns:
        The state after the last epoch, a dict of weights_only-safe values: ``model``, ``optimizer`` and
            ``scheduler`` state dicts; ``epoch`` (completed epochs); ``history`` (one dict per epoch: ``epoch,
            lr, train_loss, train_acc, val_loss, val_acc``); ``best`` (``epoch, val_acc, val_loss, model``, and
            that epoch's validation outputs ``val_y_true`` (N,) and ``val_probs`` (N, C) as tensors);
            ``rng``; ``timing`` (``epoch_seconds``); ``precision``. The model is left holding the **best**
            weights.
    """
    cfg = config or FitConfig()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")

    # The article's three objects: the loss, Adam over the trainable parameters, StepLR.
    weight = None if cfg.class_weights is None else torch.as_tensor(cfg.class_weights, dtype=torch.float32,
                                                                      device=device)
    criterion = nn.NLLLoss(weight=weight)
    optimizer = make_adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)

    train_loader, val_loader = loaders["train"], loaders["val"]  # never loaders["test"]
    generator = getattr(train_loader, "generator", None)
    trained = distributed.wrap(model, device)  # torchrun: DDP averages the gradients; alone: `model` itself

    history: list[dict] = []
    best = {"epoch": 0, "val_acc": -1.0, "val_loss": float("inf"), "model": None}
    epoch_seconds: list[float] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history, best, start = list(resume["history"]), dict(resume["best"]), int(resume["epoch"])
        epoch_seconds = list(resume.get("timing", {}).get("epoch_seconds", []))
        restore_rng(resume["rng"], generator)

    def snapshot(epoch: int) -> dict:
        return {"model": _cpu_state(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": list(history), "best": best,
                "rng": capture_rng(generator), "precision": precision,
                "timing": {"epoch_seconds": list(epoch_seconds)}}

    state = None
    of = cfg.total_epochs or cfg.epochs
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(trained, train_loader, criterion, optimizer, device, precision, cfg.channels_last,
                             progress, desc=f"epoch {epoch}/{of} train")
        scheduler.step()  # after the epoch's optimizer steps, never before (the article had it first)
        va = evaluate(model, val_loader, device, precision, cfg.channels_last, progress,
                      desc=f"epoch {epoch}/{of} val")
        epoch_seconds.append(round(time.perf_counter() - t0, 3))
        history.append({"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "val_loss": va["loss"], "val_acc": va["acc"]})
        # Model selection on validation only: higher accuracy wins, equal accuracy -> lower loss.
        if cfg.select_best and (va["acc"], -va["loss"]) > (best["val_acc"], -best["val_loss"]):
            # The validation outputs too: they are what a re-evaluation of these weights would give.
            best = {"epoch": epoch, "val_acc": va["acc"], "val_loss": va["loss"], "model": _cpu_state(model),
                    "val_y_true": torch.as_tensor(va["y_true"]), "val_probs": torch.as_tensor(va["probs"])}
        if log is not None:
            log(f"epoch {epoch:>3}/{of}  lr {lr:.2e}  train loss {tr['loss']:.4f} acc {tr['acc']:.4f}"
                f"  val loss {va['loss']:.4f} acc {va['acc']:.4f}  {epoch_seconds[-1]:.1f}s"
                + ("  *best" if best["epoch"] == epoch else ""))
        state = snapshot(epoch)
        if on_epoch_end is not None:
            on_epoch_end(state)

    state = state or snapshot(start)  # resumed a finished run: nothing left to train
    if best["model"] is not None:
        model.load_state_dict(best["model"])
    return state
