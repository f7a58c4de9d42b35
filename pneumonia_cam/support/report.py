"""Training figures: curves, confusion matrix, ROC (the article's "model evaluation" plots).

Matplotlib's object-oriented API (``matplotlib.figure.Figure``) renders with the Agg backend and never
touches pyplot's global state or a display, so this works on a headless machine and inside tests.
CAM overlays are not here: they belong to :mod:`pneumonia_cam.steps.overlay`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumonia_cam import CLASSES


def training_curves(history: list[dict], path: str | os.PathLike, best_epoch: int | None = None,
                    sizes: list[int] | None = None) -> Path:
    """Loss and accuracy per epoch, train vs validation; the best epoch marked.

    Args:
        history: fit's history, one dict per epoch.
        path: where the PNG goes.
        best_epoch: the epoch whose weights were kept; None: the best validation accuracy (ties: lower loss).
        sizes: each epoch's image side, written under its tick (a staged run validates at each size).
    """
    return _save(curves_figure(history, best_epoch, sizes), path)


def curves_figure(history: list[dict], best_epoch: int | None = None, sizes: list[int] | None = None) -> Figure:
    """The figure of :func:`training_curves`, not yet saved."""
    epochs = [r["epoch"] for r in history]
    if sizes is not None and len(sizes) < max(epochs, default=0):
        sizes = None  # e.g. a run extended with --resume --epochs: no size for the new epochs
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, title in ((ax_loss, "loss", "NLL loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="validation")
        ax.set(xlabel="epoch" if sizes is None else "epoch (image size)", title=title)
        ax.set_xticks(epochs, [f"{e}" if sizes is None else f"{e}\n{sizes[e - 1]} px" for e in epochs])
        ax.grid(alpha=0.3)
    if history:
        if best_epoch is None:
            best_epoch = max(history, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]
        ax_acc.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best (epoch {best_epoch})")
    ax_acc.legend(loc="lower right")
    return fig


def confusion_matrix_figure(confusion, path: str | os.PathLike, title: str = "test") -> Path:
    """The 2x2 table ``[[TN, FP], [FN, TP]]`` as an annotated heat map (rows: truth)."""
    m = np.asarray(confusion)
    fig = Figure(figsize=(3.8, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues", vmin=0)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASSES, yticklabels=CLASSES,
           xlabel="predicted", ylabel="true", title=f"confusion matrix ({title})")
    return _save(fig, path)


def roc_figure(fpr, tpr, auc: float, y_true, p_pneumonia, path: str | os.PathLike,
               thresholds: dict[str, float] | None = None, title: str = "test") -> Path:
    """ROC curve with its AUC; optional named operating points (e.g. argmax 0.5, validation-chosen).

    Args:
        fpr: the curve's false-positive rates (:func:`pneumonia_cam.steps.metrics.roc_curve`, computed by the caller).
        tpr: its true-positive rates, one per point of ``fpr``.
        auc: the area under it (:func:`pneumonia_cam.steps.metrics.roc_auc`), shown in the legend.
        y_true: ``(N,)`` labels (1 = PNEUMONIA), for the operating points.
        p_pneumonia: ``(N,)`` predicted p(PNEUMONIA), for the operating points.
        path: where the PNG goes.
        thresholds: name -> threshold $t$; each is drawn at its (FPR, TPR) when predicting $p \\ge t$.
        title: the split's name, in the title.
    """
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="chance")
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p_pneumonia)
    for name, t in (thresholds or {}).items():
        pred = p >= t
        ax.plot([(pred & ~y).sum() / max((~y).sum(), 1)], [(pred & y).sum() / max(y.sum(), 1)], "o",
                label=f"{name} (t = {t:.3g})")
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=f"ROC ({title})",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
