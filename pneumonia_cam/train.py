"""``python -m pneumonia_cam.train``: data -> model -> fit -> evaluation -> ``runs/<name>/``.

The command only: flags over :class:`~pneumonia_cam.support.config.TrainConfig`, their validation, the
run folder, and :func:`main`. The phases themselves (the article's notebook, top to bottom) are in
:mod:`pneumonia_cam.pipeline`.

Run folder ``OUT_DIR/NAME/``: ``config.json``, ``best.pt``, ``last.pt``, ``history.csv``,
``metrics.json``, ``curves.png``, ``confusion.png``, ``roc.png``, ``cam_grid.png``. Misuse (bad flags,
missing folders, missing weights, an existing run folder without ``--resume``/``--overwrite``, an
unwritable or full output location) exits with code 2 and one line on stderr, before any training.

Under ``torchrun --nproc_per_node=N -m pneumonia_cam.train`` the same command trains data-parallel
(:mod:`pneumonia_cam.support.distributed`, ``docs/distributed.md``): ``--batch-size`` stays the global
batch, only rank 0 prints and writes.

``--resume`` restores model, optimizer, scheduler, best-so-far and every RNG from ``last.pt``; on CPU
with ``--workers 0`` (the demo) the result is bit-identical to an uninterrupted run. With worker
processes the loaders keep their workers alive across epochs (``persistent_workers``), and the
workers' augmentation RNGs are seeded when they start, so a resumed run draws different random
augmentations from then on: equally valid, not bit-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import typing
from pathlib import Path

import torchvision

from pneumonia_cam import pipeline
from pneumonia_cam.extensions.map_model import POOLINGS, check_pooling
from pneumonia_cam.steps.model import ARCHS
from pneumonia_cam.support import distributed, images
from pneumonia_cam.support.checkpoint import CheckpointError, load_checkpoint
from pneumonia_cam.support.config import PRESETS, TrainConfig, parse_sizes
from pneumonia_cam.support.runtime import resolve_device, resolve_precision
from pneumonia_cam.support.weights import WeightsUnavailableError

# Fields a resumed run may change: they do not alter what is computed (epochs extends the run).
RESUMABLE_OVERRIDES = {"epochs", "workers", "device", "feature_cache_dir", "offline", "memory_mb"}


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


_CHOICES = {"precision": ("auto", "fp32", "bf16"), "class_weights": ("none", "balanced"), "pooling": POOLINGS}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The preset with the explicitly given flags applied; also returns those overrides."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(PRESETS[args.preset], **overrides), overrides


def validate(cfg: TrainConfig) -> None:
    """Reject values argparse cannot check by type, with one line each."""
    try:
        early_sizes = parse_sizes(cfg.early_sizes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    checks = [
        (min(early_sizes, default=32) >= 32, f"--early-sizes must all be >= 32, got {cfg.early_sizes}"),
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
        (cfg.step_size >= 1, f"--step-size must be >= 1, got {cfg.step_size}"),
        (cfg.image_size >= 32, f"--image-size must be >= 32 (ResNet downsamples 32x), got {cfg.image_size}"),
        (cfg.val_from_train is None or 0 < cfg.val_from_train < 1,
         f"--val-from-train must be a fraction in (0, 1), got {cfg.val_from_train}"),
        (cfg.workers is None or cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
        (cfg.memory_mb >= 0, f"--memory-mb must be >= 0, got {cfg.memory_mb}"),
        (cfg.freeze_backbone or not cfg.cache_features,
         "--cache-features needs --freeze-backbone: a trainable backbone changes the features at every step"),
        (cfg.feature_views >= 0, f"--feature-views must be >= 0, got {cfg.feature_views}"),
        (cfg.pooling == "mean" or not cfg.cache_features,
         (f"--cache-features needs --pooling mean: the cache holds globally pooled features, and "
          f"--pooling {cfg.pooling} pools the class map cell by cell")),
        (cfg.data_dir is None or Path(cfg.data_dir).exists(),
         f"--data-dir {cfg.data_dir}: folder not found; pass a Kaggle-layout root with train/ val/ test/, "
         "or omit it to use the generated phantoms"),
        (cfg.data_dir is None or Path(cfg.data_dir).is_dir(),
         f"--data-dir {cfg.data_dir} is a file, not a folder; pass the folder that holds train/ val/ test/ "
         "(e.g. .../chest_xray), or omit it to use the generated phantoms"),
        (cfg.data_dir is not None or min(cfg.phantom_n_train, cfg.phantom_n_val, cfg.phantom_n_test) >= 2,
         "--phantom-n-train/-val/-test must each be >= 2"),
        (all(c.isalnum() or c in "-_." for c in cfg.name) and cfg.name not in ("", ".", ".."),
         f"--name {cfg.name!r}: use letters, digits, '-', '_' or '.' only"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    try:
        check_pooling(cfg.pooling, cfg.lse_r, cfg.topk_fraction)
    except ValueError as exc:  # name the flags, not the fields
        text = str(exc).replace("lse_r", "--lse-r").replace("topk_fraction", "--topk-fraction")
        raise UsageError(text.replace("unknown pooling", "unknown --pooling")) from None
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
        device = distributed.init(cfg.device)  # torchrun: joins the group, cuda:LOCAL_RANK; alone: resolves "auto"
        # torchrun: rank 0 creates (or clears) the folder; if it fails, torchrun stops the others.
        run_dir = (prepare_run_dir(cfg, args.resume, args.overwrite) if distributed.is_main()
                   else Path(cfg.out_dir) / cfg.name)
        distributed.barrier()
        metrics = pipeline.run(cfg, run_dir, device, resume=args.resume, progress=args.progress)
    except (UsageError, images.DataError, images.BadImageError, CheckpointError, WeightsUnavailableError,
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
