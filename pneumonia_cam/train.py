"""``python -m pneumonia_cam.train``: data -> model -> fit -> evaluation -> ``runs/<name>/``.

This module only wires the others together (the article's notebook, top to bottom, as one command):

1. the data: phantoms (:mod:`pneumonia_cam.phantoms`, the default) or a Kaggle folder (``--data-dir``),
   read by :mod:`pneumonia_cam.data`;
2. the model (:mod:`pneumonia_cam.model`) and the fit loop (:mod:`pneumonia_cam.fit`), with ``last.pt``
   saved after every epoch so that ``--resume`` can continue a killed run;
3. one evaluation of the best-by-validation weights on val and test (:mod:`pneumonia_cam.metrics`),
   figures (:mod:`pneumonia_cam.report`), ``metrics.json`` and a summary table.

Run folder ``OUT_DIR/NAME/``: ``config.json``, ``best.pt``, ``last.pt``, ``history.csv``,
``metrics.json``, ``curves.png``, ``confusion.png``, ``roc.png``. Misuse (bad flags, missing folders,
missing weights, an existing run folder without ``--resume``/``--overwrite``, an unwritable or full
output location) exits with code 2 and one line on stderr, before any training.

Under ``torchrun --nproc_per_node=N -m pneumonia_cam.train`` the same command trains data-parallel
(:mod:`pneumonia_cam.distributed`, ``docs/distributed.md``): ``--batch-size`` stays the global batch,
only rank 0 prints and writes.

``--resume`` restores model, optimizer, scheduler, best-so-far and every RNG from ``last.pt``; on CPU
with ``--workers 0`` (the demo) the result is bit-identical to an uninterrupted run. With worker
processes the loaders keep their workers alive across epochs (``persistent_workers``), and the
workers' augmentation RNGs are seeded when they start, so a resumed run draws different random
augmentations from then on: equally valid, not bit-identical.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import sys
import time
import typing
from pathlib import Path

import numpy as np
import torch
import torchvision

from pneumonia_cam import (CLASSES, __version__, data, distributed, features, localization, overlay, phantoms,
                           report)
from pneumonia_cam.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pneumonia_cam.config import PRESETS, TrainConfig
from pneumonia_cam.fit import evaluate, fit, resolve_device, resolve_precision
from pneumonia_cam.metrics import binary_metrics, youden_threshold
from pneumonia_cam.model import ARCHS, WeightsUnavailableError, build_model, dilate_layer4_

# Fields a resumed run may change: they do not alter what is computed (epochs extends the run).
RESUMABLE_OVERRIDES = {"epochs", "workers", "device", "feature_cache_dir"}


class UsageError(Exception):
    """Misuse of the command: reported as one line, exit code 2."""


# ------------------------------------------------------------------------------------------ arguments
def _parse_value(kind):
    """argparse ``type=`` for a dataclass field annotation such as ``int | None``."""
    args = set(typing.get_args(kind)) or {kind}
    base = next(a for a in args if a is not type(None))

    def parse(text: str):
        if type(None) in args and text.lower() in ("none", "auto", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in "invalid int value" errors
    return parse


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field (help text from the field), plus run-control flags."""
    p = argparse.ArgumentParser(
        prog="python -m pneumonia_cam.train", argument_default=argparse.SUPPRESS,
        description="Train a ResNet to tell NORMAL from PNEUMONIA chest X-rays (the tutorial, end to end). "
                    "With no arguments: the offline 'demo' preset on generated phantoms.",
        epilog="Every field of the chosen preset can be overridden by its flag. Outputs: OUT_DIR/NAME/.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="named configuration to start from (default: demo)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run OUT_DIR/NAME from its last.pt (its saved config is used)")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="delete an existing run folder OUT_DIR/NAME and start again")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bars on stderr")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = PRESETS["demo"].__dict__[f.name]
        helptext = f"{f.metadata['help']} (demo: {default})"
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        elif f.name == "arch":
            p.add_argument(flag, choices=ARCHS, help=helptext)
        elif f.name in _CHOICES:
            p.add_argument(flag, choices=_CHOICES[f.name], help=helptext)
        else:
            p.add_argument(flag, type=_parse_value(hints[f.name]), metavar=f.name.upper(), help=helptext)
    return p


_CHOICES = {"precision": ("auto", "fp32", "bf16"), "class_weights": ("none", "balanced")}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The preset with the explicitly given flags applied; also returns those overrides."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(PRESETS[args.preset], **overrides), overrides


def validate(cfg: TrainConfig) -> None:
    """Reject values argparse cannot check by type, with one line each."""
    checks = [
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
        (cfg.step_size >= 1, f"--step-size must be >= 1, got {cfg.step_size}"),
        (cfg.image_size >= 32, f"--image-size must be >= 32 (ResNet downsamples 32x), got {cfg.image_size}"),
        (cfg.val_from_train is None or 0 < cfg.val_from_train < 1,
         f"--val-from-train must be a fraction in (0, 1), got {cfg.val_from_train}"),
        (cfg.workers is None or cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
        (cfg.freeze_backbone or not cfg.cache_features,
         "--cache-features needs --freeze-backbone: a trainable backbone changes the features at every step"),
        (cfg.feature_views >= 0, f"--feature-views must be >= 0, got {cfg.feature_views}"),
        (cfg.data_dir is None or Path(cfg.data_dir).is_dir(),
         f"--data-dir {cfg.data_dir}: folder not found; pass a Kaggle-layout root with train/ val/ test/, "
         "or omit it to use the generated phantoms"),
        (cfg.data_dir is not None or min(cfg.phantom_n_train, cfg.phantom_n_val, cfg.phantom_n_test) >= 2,
         "--phantom-n-train/-val/-test must each be >= 2"),
        (all(c.isalnum() or c in "-_." for c in cfg.name) and cfg.name not in ("", ".", ".."),
         f"--name {cfg.name!r}: use letters, digits, '-', '_' or '.' only"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    resolve_precision(cfg.precision, resolve_device(cfg.device))


# ------------------------------------------------------------------------------------------ run folder
def _bytes_needed(cfg: TrainConfig) -> int:
    """Disk space for best.pt + last.pt (model, best copy, 2 Adam moments) with a 64 MiB margin."""
    params = sum(p.numel() for p in torchvision.models.get_model(cfg.arch, weights=None).parameters())
    return params * 4 * 6 + (64 << 20)


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """Create or reuse ``OUT_DIR/NAME``; check it is writable and has room, before any training."""
    run_dir = Path(cfg.out_dir) / cfg.name
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} exists and is not a folder; choose another --name or --out-dir")
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise UsageError(f"--resume: {run_dir / 'last.pt'} not found (no epoch finished yet?); start the run "
                             "again without --resume (with --overwrite if the folder exists)")
    elif exists and overwrite:
        if not (run_dir / "config.json").is_file():
            raise UsageError(f"--overwrite: {run_dir} does not look like a run folder (no config.json); "
                             "refusing to delete it")
        shutil.rmtree(run_dir)
    elif exists:
        raise UsageError(f"{run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another --name")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {run_dir} ({exc.strerror or exc}); choose a writable --out-dir") from None
    free, need = shutil.disk_usage(run_dir).free, _bytes_needed(cfg)
    if free < need:
        raise UsageError(f"{run_dir}: only {free >> 20} MiB free, checkpoints need about {need >> 20} MiB; "
                         "free some space or choose another --out-dir")
    for stale in run_dir.glob(".*.tmp"):  # temp files of a save that a kill interrupted
        stale.unlink()
    return run_dir


def _write_json(path: Path, obj) -> None:
    """Atomic JSON write; NaN (undefined metrics) becomes null so the file is strict JSON."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o.item() if isinstance(o, np.generic) else o

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _write_history(path: Path, history: list[dict], seconds: list[float]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"])
        for row, s in zip(history, seconds):
            w.writerow([row["epoch"], row["lr"], row["train_loss"], row["train_acc"], row["val_loss"],
                        row["val_acc"], s])
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ the run
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _subset(ds, n: int | None, seed: int):
    """A seeded random subset of ``n`` items (keeps ``targets`` via data.SplitView)."""
    if n is None or n >= len(ds):
        return ds
    idx = sorted(np.random.default_rng(seed).permutation(len(ds))[:n].tolist())
    if isinstance(ds, data.SplitView):  # subset of a subset: compose the indices
        return data.SplitView(ds.dataset, [ds.indices[i] for i in idx])
    return data.SplitView(ds, idx)


def load_data(cfg: TrainConfig, progress: bool = True) -> tuple[Path, dict]:
    """The data root (phantoms generated on first use) and the three datasets."""
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
        if len(ds) == 0:
            raise data.DataError(f"{root}: the {split} split has no images; fix: add images or use "
                                 "--val-from-train for an empty val/")
    return root, datasets


def machine_info(device: torch.device) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pneumonia_cam": __version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()}


def cam_report(model, test_ds, test_loader, root: Path, run_dir: Path, cfg: TrainConfig,
               with_masks: bool) -> dict | None:
    """Localization metrics on the test split (phantoms only) and ``cam_grid.png`` (any data).

    The dilated variant reuses the trained weights with ``layer4`` switched to output stride 16 at test
    time (a 14x14 map at 224 px); a model *trained* dilated is ``--dilate-layer4``.
    """
    model.eval()
    tf = data.make_transforms(cfg.image_size)["test"]
    stems = [Path(path).stem for path, _ in test_ds.samples]
    masks = ([localization.align_mask(phantoms.load_mask(root, "test", stem), tf) for stem in stems]
             if with_masks else None)
    result = None
    if masks is not None:
        dilated = None if cfg.dilate_layer4 else dilate_layer4_(copy.deepcopy(model))
        result = localization.evaluate_localization(model, test_loader, masks, dilated_model=dilated,
                                                    seed=cfg.seed)
    # Six PNEUMONIA and two NORMAL test images, in file order: the same figure on every run.
    targets = [y for _, y in test_ds.samples]
    pick = [i for i, y in enumerate(targets) if y == 1][:6] + [i for i, y in enumerate(targets) if y == 0][:2]
    images = torch.stack([test_ds[i][0] for i in pick])  # (8, 3, H, W), normalized
    overlay.cam_grid(model, images, run_dir / "cam_grid.png", masks=[masks[i] for i in pick] if masks else None,
                     titles=[f"true {CLASSES[targets[i]]}" for i in pick])
    return result


def run(cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate ``cfg`` into ``run_dir`` (prepared by :func:`prepare_run_dir`); return metrics."""
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    device = distributed.init(cfg.device)  # under torchrun: the group joined, cuda:LOCAL_RANK or the CPU
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
    # torchrun: --batch-size is the global batch; each rank gets batch_size / W images of every batch,
    # in the single-process order, and a contiguous shard of val/test (see pneumonia_cam.distributed).
    image_loaders = data.make_loaders(datasets, cfg.batch_size, cfg.workers, device, cfg.seed)
    loaders = distributed.shard_loaders(image_loaders)
    model = build_model(cfg.arch, cfg.weights, cfg.freeze_backbone, len(CLASSES), cfg.dilate_layer4)
    class_weights = None
    if cfg.class_weights == "balanced":
        counts = np.bincount(np.asarray(datasets["train"].targets), minlength=len(CLASSES))
        class_weights = torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)
    state = load_checkpoint(run_dir / "last.pt") if resume else None  # every rank reads it
    if main_rank:
        _write_json(run_dir / "config.json", cfg.to_dict())
    base = {"config": cfg.to_dict(), "classes": list(CLASSES)}

    def on_epoch_end(s: dict) -> None:
        # best.pt first, then last.pt: a kill in between leaves a last.pt that re-runs this epoch.
        if s["best"]["epoch"] == s["epoch"]:
            save_checkpoint(run_dir / "best.pt", {**base, "model": s["best"]["model"],
                                                   "metrics": {k: s["best"][k] for k in ("epoch", "val_acc", "val_loss")}})
        save_checkpoint(run_dir / "last.pt", {**base, **s, "metrics": s["history"][-1]})
        _write_history(run_dir / "history.csv", s["history"], s["timing"]["epoch_seconds"])

    t_fit = time.perf_counter()
    opt = dict(epochs=cfg.epochs, lr=cfg.lr, step_size=cfg.step_size, gamma=cfg.gamma, weight_decay=cfg.weight_decay,
               class_weights=class_weights, device=device, progress=progress, log=say, resume=state,
               on_epoch_end=on_epoch_end if main_rank else None)
    if cfg.cache_features:
        # The frozen backbone once per image (pneumonia_cam.features), then the same fit loop on the head
        # alone; val and test are evaluated on their cached features too. Extraction time counts in fit_s.
        if cfg.augment and cfg.feature_views == 0:
            say("note: --cache-features reads the training images through the eval transforms (no "
                  "augmentation); --feature-views V caches V augmented views instead")
        feature_sets = features.cache_features(
            model, datasets, views=cfg.feature_views, batch_size=cfg.batch_size, num_workers=cfg.workers or 0,
            device=device, precision=cfg.precision, channels_last=cfg.channels_last,
            cache_dir=cfg.feature_cache_dir, seed=cfg.seed, progress=progress, log=say)
        eval_loaders = distributed.shard_loaders(features.feature_loaders(feature_sets, cfg.batch_size, cfg.seed))
        state = features.fit_cached(model, eval_loaders, **opt)
        eval_model, eval_precision = model.fc, "fp32"  # the features already carry the extraction's precision
        precision = resolve_precision(cfg.precision, device)
    else:
        state = fit(model, loaders, precision=cfg.precision, channels_last=cfg.channels_last, **opt)
        eval_model, eval_loaders, eval_precision = model, loaders, state["precision"]
        precision = state["precision"]
    t_fit = time.perf_counter() - t_fit

    # One look at the test split, with the best-by-validation weights (fit left them in `model`).
    t_eval = time.perf_counter()
    ev = {split: evaluate(eval_model, eval_loaders[split], device, eval_precision, cfg.channels_last, progress,
                          desc=split)
          for split in ("val", "test")}
    model.eval()  # (with the cache, evaluate() only switched the head)
    p = {split: ev[split]["probs"][:, 1] for split in ev}  # p(PNEUMONIA), (N,)
    threshold = youden_threshold(ev["val"]["y_true"], p["val"])  # chosen on validation only
    metrics = {
        "best_epoch": state["best"]["epoch"], "epochs_trained": state["epoch"], "precision": precision,
        "data": {"root": str(root), "phantoms": cfg.data_dir is None,
                 **{f"n_{s}": len(datasets[s]) for s in datasets}},
        "val": {**binary_metrics(ev["val"]["y_true"], p["val"]), "loss": ev["val"]["loss"]},
        "test": {**binary_metrics(ev["test"]["y_true"], p["test"]), "loss": ev["test"]["loss"]},
        "val_threshold": {"threshold": threshold,
                          "val": binary_metrics(ev["val"]["y_true"], p["val"], threshold),
                          "test": binary_metrics(ev["test"]["y_true"], p["test"], threshold)},
        "history": state["history"], "machine": machine_info(device),
    }

    metrics["machine"]["world_size"] = distributed.world_size()
    if not main_rank:  # torchrun: rank 0 alone scores the CAMs (on the whole test split) and writes
        return metrics

    # ---- Where did the model look? (lesson 03) --------------------------------------------------------
    # Phantoms carry lesion masks, so the CAM can be scored against the truth on the PNEUMONIA test images
    # (pointing game, energy, Zhou's box) beside Grad-CAM, a dilated layer4 and two baselines.
    metrics["localization"] = cam_report(model, datasets["test"], image_loaders["test"], root, run_dir, cfg,
                                         with_masks=metrics["data"]["phantoms"])
    t_eval = time.perf_counter() - t_eval

    save_checkpoint(run_dir / "best.pt", {**base, "model": state["best"]["model"] or state["model"],
                                          "metrics": {k: metrics[k] for k in ("best_epoch", "val", "test",
                                                                               "val_threshold")}})
    report.training_curves(state["history"], run_dir / "curves.png")
    report.confusion_matrix_figure(metrics["test"]["confusion"], run_dir / "confusion.png")
    report.roc_figure(ev["test"]["y_true"], p["test"], run_dir / "roc.png",
                      {"argmax": 0.5, "val-chosen": threshold})
    # Timing lives in its own section: everything else in metrics.json is deterministic on CPU.
    metrics["timing"] = {"total_s": round(time.perf_counter() - t_start, 2), "data_s": round(t_data, 2),
                         "fit_s": round(t_fit, 2), "eval_s": round(t_eval, 2),
                         "epoch_seconds": state["timing"]["epoch_seconds"],
                         "train_images_per_s": round(len(datasets["train"]) * len(state["timing"]["epoch_seconds"])
                                                     / max(sum(state["timing"]["epoch_seconds"]), 1e-9), 1)}
    _write_json(run_dir / "metrics.json", metrics)
    return metrics


def summary_table(metrics: dict, run_dir: Path) -> str:
    rows = [("", "accuracy", "sensitivity", "specificity", "precision", "F1", "AUC")]
    for name, m in (("val", metrics["val"]), ("test", metrics["test"]),
                    (f"test @ t={metrics['val_threshold']['threshold']:.3f}", metrics["val_threshold"]["test"])):
        rows.append((name, *(f"{m[k]:.4f}" if m[k] == m[k] else "n/a"
                             for k in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"))))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  " + "  ".join(f"{c:>11}" for c in r[1:]) for r in rows]
    t = metrics["timing"]
    lines.append(f"best epoch {metrics['best_epoch']} of {metrics['epochs_trained']} ({metrics['precision']}); "
                 f"{t['total_s']:.1f} s total; outputs in {run_dir}/")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 2 misuse or bad input)."""
    args = build_parser().parse_args(argv)  # exits 2 on bad flags, 0 on --help
    try:
        cfg, overrides = config_from_args(args)
        if args.resume:
            run_dir = Path(cfg.out_dir) / cfg.name
            saved = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
            if saved is not None:
                bad = sorted(k for k, v in overrides.items()
                             if k not in RESUMABLE_OVERRIDES | {"name", "out_dir"} and saved["config"].get(k) != v)
                if bad:
                    raise UsageError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in bad)} differ from "
                                     f"the run's saved config; only {sorted(RESUMABLE_OVERRIDES)} may change")
                cfg = dataclasses.replace(TrainConfig.from_dict(saved["config"]),
                                          **{k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES})
        if args.preset == "article" and cfg.data_dir is None:
            raise UsageError("--preset article needs --data-dir: the Kaggle chest-xray-pneumonia root "
                             "(train/ val/ test/); or use --preset demo for the offline phantoms")
        validate(cfg)
        if distributed.is_distributed():
            distributed.per_process_batch(cfg.batch_size, int(os.environ["WORLD_SIZE"]))  # B % W == 0
            distributed.init(cfg.device)
        # torchrun: rank 0 creates (or clears) the folder; if it fails, torchrun stops the others.
        run_dir = (prepare_run_dir(cfg, args.resume, args.overwrite) if distributed.is_main()
                   else Path(cfg.out_dir) / cfg.name)
        distributed.barrier()
        metrics = run(cfg, run_dir, resume=args.resume, progress=args.progress)
    except (UsageError, data.DataError, data.BadImageError, CheckpointError, WeightsUnavailableError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        main_rank = distributed.is_main()
        distributed.cleanup()
    if main_rank:
        print(summary_table(metrics, run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
