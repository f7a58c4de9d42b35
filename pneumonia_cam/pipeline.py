"""The pipeline behind ``python -m pneumonia_cam.train``: the article's notebook, one function per phase.

:func:`run` calls the phases in order and writes the run folder:

1. :func:`load_data`: phantoms (generated on first use) or a Kaggle-layout folder, three datasets;
2. :func:`make_model` and :func:`fit_config`: the network and the training recipe;
3. :func:`train`: :func:`pneumonia_cam.steps.fit.fit` on images, or on cached backbone features
   (:mod:`pneumonia_cam.extensions.feature_cache`), saving ``best.pt``, ``last.pt`` and
   ``history.csv`` after every epoch;
4. :func:`evaluate_splits`: the best-by-validation weights on val and test, once;
5. :func:`localize`: where the model looked (CAM scores against the phantoms' lesion masks,
   ``cam_grid.png``);
6. :func:`write_figures`: ``curves.png``, ``confusion.png``, ``roc.png``.

Under ``torchrun`` every process runs phases 1-4 on its share of the data; rank 0 alone localizes and
writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from torch import nn

from pneumonia_cam import CLASSES, __version__
from pneumonia_cam.extensions import feature_cache, localization
from pneumonia_cam.extensions.gradcam import cam_grid
from pneumonia_cam.extensions.map_model import build_map_model
from pneumonia_cam.steps import data
from pneumonia_cam.steps.fit import FitConfig, evaluate, fit
from pneumonia_cam.steps.metrics import (
    binary_metrics,
    roc_curve,
    youden_threshold,
)
from pneumonia_cam.support import distributed, images, phantoms, report, splits
from pneumonia_cam.support.checkpoint import (
    atomic_write,
    load_checkpoint,
    save_checkpoint,
)
from pneumonia_cam.support.config import TrainConfig
from pneumonia_cam.support.runtime import (
    cpu_description,
    resolve_precision,
    seed_everything,
)

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


# ------------------------------------------------------------------------------------------ files
def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically; NaN (an undefined metric) becomes null, so the file is strict JSON."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o.item() if isinstance(o, np.generic) else o

    text = json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_history(path: Path, history: list[dict], seconds: list[float]) -> None:
    """Write ``history.csv`` atomically: one row per epoch, :data:`HISTORY_COLUMNS` and ``seconds``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*HISTORY_COLUMNS, "seconds"])
    for row, s in zip(history, seconds):
        w.writerow([*(row[k] for k in HISTORY_COLUMNS), s])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def machine_info(device: torch.device) -> dict:
    """Versions, platform and device of this run, for ``metrics.json``."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pneumonia_cam": __version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()}


# ------------------------------------------------------------------------------------------ 1. data
def _subset(ds, n: int | None, seed: int):
    """A seeded random subset of ``n`` items (keeps ``targets`` via splits.SplitView)."""
    if n is None or n >= len(ds):
        return ds
    idx = sorted(np.random.default_rng(seed).permutation(len(ds))[:n].tolist())
    if isinstance(ds, splits.SplitView):  # subset of a subset: compose the indices
        return splits.SplitView(ds.dataset, [ds.indices[i] for i in idx])
    return splits.SplitView(ds, idx)


def load_data(cfg: TrainConfig, progress: bool = True) -> tuple[Path, dict]:
    """The data root (phantoms generated on first use) and the ``train``/``val``/``test`` datasets.

    Raises:
        DataError: a split is empty.
    """
    if cfg.data_dir is None:
        pcfg = phantoms.PhantomConfig(size=cfg.phantom_size, n_train=cfg.phantom_n_train, n_val=cfg.phantom_n_val,
                                      n_test=cfg.phantom_n_test, seed=cfg.phantom_seed)
        root = phantoms.ensure_phantoms(pcfg, progress=progress)
    else:
        root = Path(cfg.data_dir)
    datasets = data.make_datasets(root, size=cfg.image_size, val_from_train=cfg.val_from_train, seed=cfg.seed,
                                  augment=cfg.augment, strict=cfg.strict_data)
    datasets["train"] = _subset(datasets["train"], cfg.max_train_samples, cfg.seed)
    for split in ("val", "test"):
        datasets[split] = _subset(datasets[split], cfg.max_eval_samples, cfg.seed)
    for split, ds in datasets.items():
        images.keep_in_memory(ds, cfg.memory_mb * 2**20)
        if len(ds) == 0:
            raise images.DataError(f"{root}: the {split} split has no images; fix: add images or use "
                                   "--val-from-train for an empty val/")
    return root, datasets


# ------------------------------------------------------------------------------------------ 2. model
def make_model(cfg: TrainConfig, progress: bool = True) -> nn.Module:
    """The network of :func:`pneumonia_cam.extensions.map_model.build_map_model`, as ``cfg`` describes it
    (the article's model, with the head and ``layer4`` options of ``--pooling`` and ``--dilate-layer4``).

    ``progress``: the weights download's progress bar, when ``--weights imagenet`` has to download.
    """
    return build_map_model(cfg.arch, cfg.weights, cfg.freeze_backbone, len(CLASSES), cfg.dilate_layer4,
                           offline=cfg.offline, progress=progress, pooling=cfg.pooling, lse_r=cfg.lse_r,
                           topk_fraction=cfg.topk_fraction)


def fit_config(cfg: TrainConfig, device: torch.device, train_set) -> FitConfig:
    r"""The :class:`~pneumonia_cam.steps.fit.FitConfig` of ``cfg``.

    ``--class-weights balanced`` weighs class $c$ by $N / (C \, N_c)$: the inverse of its frequency in
    ``train_set`` (whose ``targets`` are read), 1 on average over the images.
    """
    class_weights = None
    if cfg.class_weights == "balanced":
        counts = np.bincount(np.asarray(train_set.targets), minlength=len(CLASSES))
        class_weights = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)
    return FitConfig(epochs=cfg.epochs, lr=cfg.lr, step_size=cfg.step_size, gamma=cfg.gamma,
                     weight_decay=cfg.weight_decay, class_weights=class_weights, device=device,
                     precision=cfg.precision, channels_last=cfg.channels_last)


# ------------------------------------------------------------------------------------------ 3. train
@dataclass
class Trained:
    """What training leaves for evaluation."""

    state: dict  # fit's final state (whole-model state dicts, also with the feature cache)
    scorer: nn.Module  # what maps a loader's batches to log-probabilities: the model, or its head
    scorer_loaders: dict  # this process's loaders of the scorer's inputs: images, or cached features
    scorer_precision: str  # autocast when scoring (cached features already carry the extraction's)
    precision: str  # the precision the backbone ran in, for metrics.json


def checkpoint_saver(run_dir: Path, base: dict) -> Callable[[dict], None]:
    """``fit``'s ``on_epoch_end``: ``best.pt`` (when the epoch is the best), ``last.pt``, ``history.csv``."""
    def on_epoch_end(s: dict) -> None:
        # best.pt first, then last.pt: a kill in between leaves a last.pt that re-runs this epoch.
        if s["best"]["epoch"] == s["epoch"]:
            save_checkpoint(run_dir / "best.pt", {**base, "model": s["best"]["model"],
                                                   "metrics": {k: s["best"][k] for k in ("epoch", "val_acc", "val_loss")}})
        save_checkpoint(run_dir / "last.pt", {**base, **s, "metrics": s["history"][-1]})
        write_history(run_dir / "history.csv", s["history"], s["timing"]["epoch_seconds"])
    return on_epoch_end


def describe_stages(stages: list[tuple[int, int]]) -> str:
    """``[(128, 3), (176, 4), (224, 5)]`` -> ``"epochs 1-3 train on 128 px images, epoch 4 on 176 px,
    epoch 5 on 224 px"``."""
    parts, first = [], 1
    for size, end in stages:
        epochs = f"epoch {end}" if end == first else f"epochs {first}-{end}"
        parts.append(f"{epochs} {'train on ' if not parts else 'on '}{size} px{' images' if not parts else ''}")
        first = end + 1
    return ", ".join(parts)


def train(cfg: TrainConfig, model: nn.Module, datasets: dict, image_loaders: dict, fit_cfg: FitConfig, *,
          resume: dict | None, on_epoch_end: Callable[[dict], None] | None, progress: bool,
          say: Callable[[str], None]) -> Trained:
    """Train ``model`` on images, or (``cfg.cache_features``) its head on cached backbone features.

    ``image_loaders`` are the single-process loaders; under torchrun each process trains and scores on
    its shard of them (:func:`pneumonia_cam.support.distributed.shard_loaders`).
    """
    device = torch.device(fit_cfg.device)
    opts = dict(resume=resume, on_epoch_end=on_epoch_end, log=say, progress=progress)
    if not cfg.cache_features:
        image_shards = distributed.shard_loaders(image_loaders)
        # Cheaper first epochs: consecutive epochs of one size form a stage, and fit() runs once per
        # stage, each resuming the last (optimizer, schedule and RNGs intact). A smaller stage trains
        # and validates at its own size (a model trained on 128 px images is measured at 128 px, for a
        # third of the cost) and cannot become the best: the saved model is used at full size, so it
        # is chosen at full size.
        sizes = cfg.epoch_sizes()
        stages = [(size, end) for end, size in enumerate(sizes, start=1) if end == len(sizes) or sizes[end] != size]
        if len(stages) > 1 and (resume is None or resume["epoch"] < stages[-2][1]):
            say(f"{describe_stages(stages)}; each validates at its own size, and only {cfg.image_size} px "
                f"epochs compete for the best epoch")
        for size, end in stages[:-1]:
            if opts["resume"] is not None and opts["resume"]["epoch"] >= end:
                continue  # a resumed run already past this stage
            shards = image_shards
            if size != cfg.image_size:
                tf = data.make_transforms(size)
                sets = {s: splits.with_transform(datasets[s], tf["train" if s == "train" and cfg.augment else "val"])
                        for s in ("train", "val")}
                shards = distributed.shard_loaders(data.make_loaders(sets, cfg.batch_size, cfg.workers, device,
                                                                     cfg.seed))
            stage_cfg = dataclasses.replace(fit_cfg, epochs=end, select_best=size == cfg.image_size,
                                            total_epochs=fit_cfg.epochs)
            opts["resume"] = fit(model, shards, stage_cfg, **opts)
        state = fit(model, image_shards, fit_cfg, **opts)
        return Trained(state, model, image_shards, state["precision"], state["precision"])
    # The frozen backbone once per image, then the same fit loop on the head alone; val and test are
    # scored on their cached features too.
    if cfg.augment and cfg.feature_views == 0:
        say("note: --cache-features reads the training images through the eval transforms (no "
            "augmentation); --feature-views V caches V augmented views instead")
    feature_sets = feature_cache.cache_features(
        model, datasets, views=cfg.feature_views, batch_size=cfg.batch_size, num_workers=cfg.workers or 0,
        device=device, precision=cfg.precision, channels_last=cfg.channels_last,
        cache_dir=cfg.feature_cache_dir, seed=cfg.seed, progress=progress, log=say)
    feature_shards = distributed.shard_loaders(feature_cache.feature_loaders(feature_sets, cfg.batch_size, cfg.seed))
    state = feature_cache.fit_cached(model, feature_shards, fit_cfg, **opts)
    return Trained(state, model.fc, feature_shards, "fp32", resolve_precision(cfg.precision, device))


# ------------------------------------------------------------------------------------------ 4. evaluate
def evaluate_splits(trained: Trained, device: torch.device, channels_last: bool,
                    progress: bool) -> tuple[dict, dict]:
    """Score val and test once, with the best-by-validation weights (``fit`` left them in the model).

    Validation was already scored with these weights during training: its outputs are taken from
    ``fit``'s state (a checkpoint without them is scored again).

    The decision threshold beside argmax's 0.5 is Youden's $J$ chosen on validation only.

    Returns:
        metrics (dict): ``val``, ``test`` (binary metrics and loss) and ``val_threshold``.
        outputs (dict): per split, ``"y_true"`` and ``"p"`` (p(PNEUMONIA), ``(N,)``).
    """
    best = trained.state["best"]
    ev = {}
    if "val_probs" in best:  # fit scored val with these very weights at the best epoch: reuse it
        ev["val"] = {"loss": best["val_loss"], "y_true": best["val_y_true"].numpy(), "probs": best["val_probs"].numpy()}
    for split in ("val", "test"):
        ev[split] = ev.get(split) or evaluate(trained.scorer, trained.scorer_loaders[split], device,
                                              trained.scorer_precision, channels_last, progress, desc=split)
    y = {split: ev[split]["y_true"] for split in ev}
    p = {split: ev[split]["probs"][:, 1] for split in ev}  # p(PNEUMONIA), (N,)
    threshold = youden_threshold(y["val"], p["val"])
    metrics = {
        "val": {**binary_metrics(y["val"], p["val"]), "loss": ev["val"]["loss"]},
        "test": {**binary_metrics(y["test"], p["test"]), "loss": ev["test"]["loss"]},
        "val_threshold": {"threshold": threshold,
                          "val": binary_metrics(y["val"], p["val"], threshold),
                          "test": binary_metrics(y["test"], p["test"], threshold)},
    }
    return metrics, {"y_true": y, "p": p}


# ------------------------------------------------------------------------------------------ 5. localize
def localize(model: nn.Module, test_ds, test_loader, root: Path, run_dir: Path, cfg: TrainConfig,
             with_masks: bool) -> dict | None:
    """Localization metrics on the test split (phantoms only) and ``cam_grid.png`` (any data).

    CAM, Grad-CAM at ``layer4`` and ``layer3``, and the baselines; every other map is scored by
    ``python -m pneumonia_cam.study``.

    Returns:
        The result of :func:`pneumonia_cam.extensions.localization.evaluate_localization`, or ``None``
            without lesion masks.
    """
    model.eval()
    tf = data.make_transforms(cfg.image_size)["test"]
    stems = [Path(path).stem for path, _ in test_ds.samples]
    masks = ([localization.align_mask(phantoms.load_mask(root, "test", stem), tf) for stem in stems]
             if with_masks else None)
    result = None
    if masks is not None:
        # The lung baselines: uniform over both lung fields, and over the lung that holds the lesion.
        # Only the lesion images are scored: NORMAL ones keep an empty stand-in, never read.
        lungs = [localization.align_mask(phantoms.load_lung_mask(root, "test", stem), tf) if mask.any()
                 else np.zeros_like(mask) for stem, mask in zip(stems, masks)]
        # The methods that come from one forward and backward pass; the dilated network and the
        # other maps are scored by `python -m pneumonia_cam.study`.
        methods = [m for m in localization.DEFAULT_METHODS if m != "dilated_cam"]
        result = localization.evaluate_localization(model, test_loader, masks, methods, lung_masks=lungs,
                                                    seed=cfg.seed)
    # Six PNEUMONIA and two NORMAL test images, in file order: the same figure on every run.
    targets = [y for _, y in test_ds.samples]
    pick = [i for i, y in enumerate(targets) if y == 1][:6] + [i for i, y in enumerate(targets) if y == 0][:2]
    batch = torch.stack([test_ds[i][0] for i in pick])  # (8, 3, H, W), normalized
    cam_grid(model, batch, run_dir / "cam_grid.png", masks=[masks[i] for i in pick] if masks else None,
             titles=[f"true {CLASSES[targets[i]]}" for i in pick])
    return result


# ------------------------------------------------------------------------------------------ 6. figures
def write_figures(run_dir: Path, history: list[dict], metrics: dict, outputs: dict,
                  sizes: list[int] | None = None) -> None:
    """``curves.png`` (loss and accuracy per epoch), ``confusion.png`` (test), ``roc.png`` (test)."""
    report.training_curves(history, run_dir / "curves.png", best_epoch=metrics["best_epoch"], sizes=sizes)
    report.confusion_matrix_figure(metrics["test"]["confusion"], run_dir / "confusion.png")
    y, p = outputs["y_true"]["test"], outputs["p"]["test"]
    fpr, tpr, _ = roc_curve(y, p)
    report.roc_figure(fpr, tpr, metrics["test"]["auc"], y, p, run_dir / "roc.png",  # AUC: binary_metrics' own
                      {"argmax": 0.5, "val-chosen": metrics["val_threshold"]["threshold"]})


# ------------------------------------------------------------------------------------------ the run
def run(cfg: TrainConfig, run_dir: Path, device: torch.device, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate ``cfg`` into ``run_dir``; return the metrics (also written to ``metrics.json``).

    Args:
        cfg: the validated configuration.
        run_dir: the prepared run folder (``pneumonia_cam.train.prepare_run_dir``).
        device: this process's device (:func:`pneumonia_cam.support.distributed.init`).
        resume: continue from ``run_dir / "last.pt"``.
        progress: tqdm bars (rank 0 only).
    """
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    main_rank = distributed.is_main()  # only rank 0 prints and writes
    progress = progress and main_rank
    say = print if main_rank else (lambda *args, **kwargs: None)
    if cfg.precision == "auto" and device.type == "cpu" and resolve_precision("auto", device) == "fp32":
        say("note: this CPU has no AMX or AVX512-BF16 units, where bf16 autocast is emulated and slower: using fp32")

    if not main_rank:  # rank 0 generates the phantoms (once), then the others read them
        distributed.barrier()
    root, datasets = load_data(cfg, progress)
    if main_rank:
        distributed.barrier()
    t_data = time.perf_counter() - t_start
    # torchrun: --batch-size is the global batch; train() shards these loaders per process.
    image_loaders = data.make_loaders(datasets, cfg.batch_size, cfg.workers, device, cfg.seed)
    model = make_model(cfg, progress)
    fit_cfg = fit_config(cfg, device, datasets["train"])

    base = {"config": cfg.to_dict(), "classes": list(CLASSES)}  # in every checkpoint
    last = load_checkpoint(run_dir / "last.pt") if resume else None  # every rank reads it
    if main_rank:
        write_json(run_dir / "config.json", cfg.to_dict())
    t_fit = time.perf_counter()
    trained = train(cfg, model, datasets, image_loaders, fit_cfg, resume=last, progress=progress, say=say,
                    on_epoch_end=checkpoint_saver(run_dir, base) if main_rank else None)
    t_fit = time.perf_counter() - t_fit

    t_eval = time.perf_counter()
    scores, outputs = evaluate_splits(trained, device, cfg.channels_last, progress)
    state = trained.state
    metrics = {
        "best_epoch": state["best"]["epoch"], "epochs_trained": state["epoch"], "precision": trained.precision,
        "data": {"root": str(root), "phantoms": cfg.data_dir is None,
                 **{f"n_{s}": len(datasets[s]) for s in datasets}},
        **scores,
        "history": state["history"], "machine": {**machine_info(device), "world_size": distributed.world_size()},
    }
    if not main_rank:  # torchrun: rank 0 alone scores the CAMs (on the whole test split) and writes
        return metrics

    t_eval = time.perf_counter() - t_eval

    # Phantoms carry lesion masks, so the CAM can be scored against the truth (lesson 03).
    t_loc = time.perf_counter()
    metrics["localization"] = localize(model, datasets["test"], image_loaders["test"], root, run_dir, cfg,
                                       with_masks=metrics["data"]["phantoms"])
    t_loc = time.perf_counter() - t_loc

    t_fig = time.perf_counter()
    save_checkpoint(run_dir / "best.pt", {**base, "model": state["best"]["model"] or state["model"],
                                          "metrics": {k: metrics[k] for k in ("best_epoch", "val", "test",
                                                                               "val_threshold")}})
    sizes = cfg.epoch_sizes()
    write_figures(run_dir, state["history"], metrics, outputs,
                  sizes if not cfg.cache_features and len(set(sizes)) > 1 else None)
    t_fig = time.perf_counter() - t_fig
    # Timing lives in its own section: everything else in metrics.json is deterministic on CPU.
    seconds = state["timing"]["epoch_seconds"]
    metrics["timing"] = {"total_s": round(time.perf_counter() - t_start, 2), "data_s": round(t_data, 2),
                         "fit_s": round(t_fit, 2), "eval_s": round(t_eval, 2),
                         "localization_s": round(t_loc, 2), "figures_s": round(t_fig, 2), "epoch_seconds": seconds,
                         "train_images_per_s": round(len(datasets["train"]) * len(seconds) / max(sum(seconds), 1e-9), 1)}
    write_json(run_dir / "metrics.json", metrics)
    return metrics
