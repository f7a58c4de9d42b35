"""``python -m pneumonia_cam.study``: does the map point at the lesion, over several training seeds?

One run's localization figure moves as much between seeds as between methods, so the study trains
(or reuses) one run per seed, scores every map method and every baseline of
:mod:`pneumonia_cam.extensions.localization` on the same test phantoms, and reports each figure as
the mean and standard deviation over seeds with a bootstrap 95 % interval over images.

Folder ``OUT_DIR/NAME/``: ``seed<k>/`` (a run folder of ``python -m pneumonia_cam.train``, plus
``study_scores.json``, its per-image scores), ``study.json``, ``study.md`` and ``maps.png`` (the maps
side by side on the first lesion test images, drawn from the first seed's model). A run with a
``metrics.json`` is reused, one with only ``last.pt`` is resumed, and scores already in
``study_scores.json`` are not recomputed: a killed study picks up where it stopped. The threshold of
the mIoU column is chosen on the validation phantoms, per seed and method (never on test).
Misuse exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from pneumonia_cam import pipeline
from pneumonia_cam.extensions import localization as loc
from pneumonia_cam.extensions import saliency
from pneumonia_cam.extensions.map_model import dilate_layer4_, load_model
from pneumonia_cam.steps import data, overlay
from pneumonia_cam.support import images, phantoms
from pneumonia_cam.support.checkpoint import CheckpointError, load_checkpoint
from pneumonia_cam.support.config import TrainConfig
from pneumonia_cam.support.runtime import cpu_description, resolve_device
from pneumonia_cam.support.weights import WeightsUnavailableError
from pneumonia_cam.train import (
    RESUMABLE_OVERRIDES,
    UsageError,
    build_parser,
    config_from_args,
    prepare_run_dir,
    validate,
)

#: The model's maps the study scores, then the baselines (the table's rows, in this order).
METHODS = ("cam", "dilated_cam", "gradcam_layer3", "layercam_layer3", "layercam_layer34", "cam_flip",
           "contrastive_cam")
BASELINES = loc.BASELINES
#: The table's columns: (key in study.json, header).
COLUMNS = (("hit_15px", "hit@15px"), ("hit_0px", "hit@0px"), ("energy_over_area", "energy/area"),
           ("box_iou", "Zhou-box IoU"), ("miou_val_t", "mIoU@val-t"))
SCORES_FILE = "study_scores.json"
#: The maps side by side (:func:`maps_figure`), in ``OUT_DIR/NAME/``, and its number of images.
FIGURE_FILE = "maps.png"
FIGURE_IMAGES = 6


# ------------------------------------------------------------------------------------------ arguments
def build_study_parser() -> argparse.ArgumentParser:
    """The study's own flags; the runs' training flags travel in ``--train-args``."""
    p = argparse.ArgumentParser(
        prog="python -m pneumonia_cam.study",
        description="Train (or reuse) one demo run per seed and score every map method and baseline "
                    "against the phantoms' lesion masks: mean, sd over seeds, bootstrap 95% CI over images.",
        epilog="Outputs: OUT_DIR/NAME/seed<k>/ (run folders), study.json, study.md, maps.png.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--name", default="study", help="study folder name: OUT_DIR/NAME/ (default: study)")
    p.add_argument("--out-dir", default="runs", help="parent folder (default: runs)")
    p.add_argument("--train-args", default="",
                   help='extra flags of python -m pneumonia_cam.train for every run, e.g. --train-args "--pooling lse" '
                        '(a single flag: --train-args=--no-augment)')
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per scoring pass (default: 32)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bars on stderr")
    p.add_argument("--figure", action=argparse.BooleanOptionalAction, default=True,
                   help=f"draw {FIGURE_FILE}: the first {FIGURE_IMAGES} PNEUMONIA test phantoms, one column per "
                        "map, from the first seed's best.pt")
    p.add_argument("--figure-methods", nargs="+", metavar="METHOD", default=None,
                   help=f"the figure's maps, from {', '.join(METHODS)} (default: cam and the map with the "
                        "highest mean energy/area)")
    return p


def run_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The training configuration of seed ``seed``: ``--train-args`` over the demo preset."""
    extra = shlex.split(args.train_args)
    fixed = {"--seed", "--name", "--out-dir", "--resume", "--overwrite"}
    clash = sorted(f for f in extra if f.split("=")[0] in fixed)
    if clash:
        raise UsageError(f"--train-args may not set {', '.join(clash)}: the study sets them (use --seeds, "
                         "--name, --out-dir)")
    parser = build_parser()

    def error(message: str):
        raise UsageError(f"--train-args: {message}")

    parser.error = error  # one line instead of argparse's usage block
    ns = parser.parse_args([*extra, "--seed", str(seed), "--name", f"seed{seed}",
                            "--out-dir", str(Path(args.out_dir) / args.name)])
    cfg, _ = config_from_args(ns)
    if cfg.data_dir is not None:
        raise UsageError("the study scores maps against the phantoms' lesion masks; drop --data-dir")
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ training
def ensure_run(cfg: TrainConfig, progress: bool) -> tuple[Path, str]:
    """Reuse, resume or train the run of ``cfg``; returns its folder and what was done."""
    run_dir = Path(cfg.out_dir) / cfg.name
    wanted = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_OVERRIDES}

    def check_same(saved: dict, what: str) -> None:
        diff = sorted(k for k, v in wanted.items() if saved.get(k) != v)
        if diff:
            raise UsageError(f"{run_dir} holds a run {what} with other settings "
                             f"({', '.join('--' + k.replace('_', '-') for k in diff)}); "
                             "choose another --name or delete that folder")

    if (run_dir / "metrics.json").is_file():
        check_same(json.loads((run_dir / "config.json").read_text()), "already finished")
        return run_dir, "reused"
    device = resolve_device(cfg.device)
    if (run_dir / "last.pt").is_file():
        saved = load_checkpoint(run_dir / "last.pt")["config"]
        check_same(saved, "to resume")
        prepare_run_dir(cfg, resume=True, overwrite=False)
        pipeline.run(cfg, run_dir, device, resume=True, progress=progress)
        return run_dir, "resumed"
    # Nothing finished yet: start again (an empty or half-created folder is replaced).
    overwrite = (run_dir / "config.json").is_file()
    prepare_run_dir(cfg, resume=False, overwrite=overwrite)
    pipeline.run(cfg, run_dir, device, resume=False, progress=progress)
    return run_dir, "trained"


# ------------------------------------------------------------------------------------------ scoring
def lesion_split(cfg: TrainConfig, ds, root: Path, limit: int | None = None) -> tuple[Subset, list, list]:
    """The lesion images of a split (a dataset of the run), with aligned lesion and lung masks.

    ``limit``: stop after that many, the first in file order (the first ones scored).
    """
    tf = data.make_transforms(cfg.image_size)["test"]
    keep, masks, lungs = [], [], []
    for i, (path, y) in enumerate(ds.samples):
        if y != 1 or (limit is not None and len(keep) >= limit):
            continue
        split, stem = Path(path).parent.parent.name, Path(path).stem  # <root>/<split>/PNEUMONIA/<stem>.png
        mask = loc.align_mask(phantoms.load_mask(root, split, stem), tf)
        if mask.any():
            keep.append(i)
            masks.append(mask)
            lungs.append(loc.align_mask(phantoms.load_lung_mask(root, split, stem), tf))
    return Subset(ds, keep), masks, lungs


def load_models(run_dir: Path, cfg: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The run's ``best.pt`` and the same weights with a dilated ``layer4`` (for ``dilated_cam``)."""
    model, _ = load_model(run_dir / "best.pt", map_location=resolve_device(cfg.device))
    return model, model if cfg.dilate_layer4 else dilate_layer4_(copy.deepcopy(model))


def score_run(run_dir: Path, cfg: TrainConfig, methods: list[str], batch_size: int, progress: bool) -> dict:
    """Per-image scores of ``methods`` on val and test, cached in ``run_dir/study_scores.json``."""
    path = run_dir / SCORES_FILE
    key = {"thresholds": list(loc.THRESHOLDS), "tolerance_px": 15.0, "box_threshold": 0.2}
    cache = {"key": key, "methods": {}, "area": {}, "seconds": 0.0}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            cache = saved
    missing = [m for m in methods if m not in cache["methods"]]
    if not missing:
        return cache
    t0 = time.perf_counter()
    root, datasets = pipeline.load_data(cfg, progress=False)
    model, dilated = load_models(run_dir, cfg)
    found = {}
    for split in ("val", "test"):
        subset, masks, lungs = lesion_split(cfg, datasets[split], root)
        if not masks:
            raise UsageError(f"the {split} split has no lesion images; raise --phantom-n-{split}")
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
        res = loc.image_scores(model, loader, masks, missing, lung_masks=lungs, dilated_model=dilated,
                               seed=cfg.seed, progress=progress)
        cache["area"][split] = res["area"]
        for m in missing:
            s = res["scores"][m]
            keep = s if split == "test" else {"ious": s["ious"]}  # val only chooses the threshold
            found.setdefault(m, {"map_size": res["map_size"][m]})[split] = {
                k: np.round(np.asarray(v, dtype=float), 6).tolist() for k, v in keep.items()}
    cache["methods"].update(found)
    cache["seconds"] = round(cache["seconds"] + time.perf_counter() - t0, 2)
    pipeline.write_json(path, cache)
    return cache


def seed_summary(cache: dict, method: str) -> dict:
    """One seed's figure per column for ``method``, with the validation-chosen threshold."""
    s = cache["methods"][method]
    test, area = s["test"], np.asarray(cache["area"]["test"])
    t, i = loc.choose_threshold(np.asarray(s["val"]["ious"]))
    return {"hit_15px": float(np.mean(test["hit_15px"])), "hit_0px": float(np.mean(test["hit_0px"])),
            "energy_over_area": float(np.mean(test["energy"]) / area.mean()),
            "box_iou": float(np.mean(test["box_iou"])),
            "miou_val_t": float(np.asarray(test["ious"])[:, i].mean()), "val_t": t}


def per_image(cache: dict, method: str, column: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The per-image values (and denominators) behind a column, for the bootstrap."""
    test = cache["methods"][method]["test"]
    if column == "energy_over_area":
        return np.asarray(test["energy"]), np.asarray(cache["area"]["test"])
    if column == "miou_val_t":
        _, i = loc.choose_threshold(np.asarray(cache["methods"][method]["val"]["ious"]))
        return np.asarray(test["ious"])[:, i], None
    return np.asarray(test[column], dtype=float), None  # hit_15px, hit_0px, box_iou


def summarize(caches: dict[int, dict], rows: list[str], resamples: int) -> dict:
    """Per method and column: the per-seed values, their mean and sd, and the bootstrap interval."""
    out = {}
    for m in rows:
        out[m] = {}
        for col, _ in COLUMNS:
            values = [seed_summary(caches[k], m)[col] for k in caches]
            pairs = [per_image(caches[k], m, col) for k in caches]
            v = np.stack([p[0] for p in pairs])  # (S, N)
            d = None if pairs[0][1] is None else np.stack([p[1] for p in pairs])
            lo, hi = loc.bootstrap_ci(v, d, n_resamples=resamples)
            out[m][col] = {"per_seed": values, "mean": float(np.mean(values)),
                           "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "ci95": [lo, hi]}
    return out


def machine() -> dict:
    """CPU kind (:func:`pneumonia_cam.support.runtime.cpu_description`), core count, torch version."""
    return {"cpu": cpu_description(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def markdown(study: dict) -> str:
    """``study.md``: the table (mean ± sd [95 % CI]) and how it was made."""
    lines = [f"Localization over {len(study['seeds'])} training seeds ({', '.join(map(str, study['seeds']))}) on "
             f"{study['n_test_images']} PNEUMONIA test phantoms: mean ± sd over seeds [bootstrap 95 % interval "
             f"over images]. mIoU at the threshold chosen on the validation phantoms.", "",
             "| map | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for m in study["methods"] + study["baselines"]:
        cells = []
        for col, _ in COLUMNS:
            s = study["summary"][m][col]
            fmt = ".2f" if col == "energy_over_area" else ".3f"
            cells.append(f"{s['mean']:{fmt}} ± {s['sd']:{fmt}} [{s['ci95'][0]:{fmt}}, {s['ci95'][1]:{fmt}}]")
        label = f"*{m}* (baseline)" if m in study["baselines"] else m
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    acc = ", ".join(f"{a:.3f}" for a in study["test_accuracy"].values())
    mach = study["machine"]
    lines += ["", f"Test accuracy per seed: {acc}.",
              f"Command: `{study['command']}`.",
              f"Machine: {mach['cpu']}, {mach['cpu_count']} cores, torch {mach['torch']}.",
              f"Compute: {study['compute_s']:.0f} s of training and scoring in all; this invocation "
              f"{study['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figure
def figure_methods(study: dict, chosen: list[str] | None) -> tuple[list[str], str]:
    """The figure's maps: ``chosen``, or ``cam`` and the map with the highest mean energy/area; and why."""
    if chosen:
        return list(dict.fromkeys(chosen)), "from --figure-methods"
    energy = {m: study["summary"][m]["energy_over_area"]["mean"] for m in study["methods"]}
    best = max(energy, key=energy.get)
    return list(dict.fromkeys(["cam", best])), f"{best} has the highest mean energy/area of the maps, {energy[best]:.2f}"


@torch.no_grad()
def maps_figure(run_dir: Path, cfg: TrainConfig, study: dict, methods: list[str],
                n: int = FIGURE_IMAGES) -> Figure:
    """The first ``n`` lesion test images, one row each: the X-ray, then each map as it was scored.

    The maps go through the scoring path (:func:`~pneumonia_cam.extensions.saliency.saliency_maps`,
    then :func:`~pneumonia_cam.extensions.localization.normalized_maps`) and are drawn unchanged;
    column titles give the study's means over seeds (over all test images, not these ``n``).
    """
    root, datasets = pipeline.load_data(cfg, progress=False)
    subset, masks, _ = lesion_split(cfg, datasets["test"], root, limit=n)
    x = torch.stack([subset[i][0] for i in range(len(subset))])  # (N, 3, H, W), normalized
    model, dilated = load_models(run_dir, cfg)
    raw = saliency.saliency_maps(model, x.to(next(model.parameters()).device), methods, 1, dilated.eval())
    maps = loc.normalized_maps(raw, tuple(x.shape[-2:]))  # {method: (N, H, W)}, values in [0, 1]
    summary = study["summary"]
    height = 2.5 * len(x) + 1.0  # inches: the rows, and a header for the titles
    fig = Figure(figsize=(2.3 * (len(methods) + 1) + 0.8, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(x), len(methods) + 1, squeeze=False, gridspec_kw={"top": 1 - 1.0 / height})
    heat = None
    for i, row in enumerate(axes):
        stem = Path(subset.dataset.samples[subset.indices[i]][0]).stem
        overlay.show_cam_on_image(row[0], x[i], None, masks[i], title=("X-ray, lesion outline\n" if i == 0 else "")
                                  + stem)
        for ax, m in zip(row[1:], methods):
            title = (f"{m}\nhit@15px {summary[m]['hit_15px']['mean']:.2f}\n"
                     f"energy/area {summary[m]['energy_over_area']['mean']:.2f}") if i == 0 else None
            heat = overlay.show_cam_on_image(ax, x[i], maps[m][i], masks[i], title=title, normalize=False)
    fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="normalized map, as scored")
    fig.suptitle(f"Maps for PNEUMONIA of {run_dir.name} (best.pt); titles: means over "
                 f"{len(study['seeds'])} seeds, all {study['n_test_images']} test images", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 2 misuse or bad input)."""
    t0 = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    args = build_study_parser().parse_args(argv)
    try:
        if len(set(args.seeds)) != len(args.seeds):
            raise UsageError(f"--seeds must differ, got {args.seeds}")
        if args.resamples < 10:
            raise UsageError(f"--resamples must be >= 10, got {args.resamples}")
        if not all(c.isalnum() or c in "-_." for c in args.name) or args.name in ("", ".", ".."):
            raise UsageError(f"--name {args.name!r}: use letters, digits, '-', '_' or '.' only")
        unknown = [m for m in args.figure_methods or [] if m not in METHODS]
        if unknown:
            raise UsageError(f"--figure-methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        cfgs = {k: run_config(args, k) for k in args.seeds}  # every flag checked before any training
        study_dir = Path(args.out_dir) / args.name
        rows = list(METHODS) + list(BASELINES)
        caches, accuracy, done, train_s = {}, {}, {}, 0.0
        for k in tqdm(args.seeds, desc="seeds", unit="run", disable=not args.progress):
            run_dir, done[k] = ensure_run(cfgs[k], args.progress)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            accuracy[f"seed{k}"] = metrics["test"]["accuracy"]
            train_s += metrics.get("timing", {}).get("total_s", 0.0)
            caches[k] = score_run(run_dir, cfgs[k], rows, args.batch_size, args.progress)
        per_seed = {f"seed{k}": {m: seed_summary(caches[k], m) for m in rows} for k in args.seeds}
        study = {
            "command": "python -m pneumonia_cam.study " + shlex.join(argv),
            "seeds": list(args.seeds), "train_args": args.train_args, "runs": done,
            "methods": list(METHODS), "baselines": list(BASELINES), "columns": [c for c, _ in COLUMNS],
            "thresholds": list(loc.THRESHOLDS), "resamples": args.resamples,
            "n_test_images": len(caches[args.seeds[0]]["area"]["test"]),
            "map_size": {m: caches[args.seeds[0]]["methods"][m]["map_size"] for m in rows},
            "test_accuracy": accuracy, "per_seed": per_seed,
            "summary": summarize(caches, rows, args.resamples),
            "machine": machine(),
            "compute_s": round(train_s + sum(c["seconds"] for c in caches.values()), 1),
        }
        study["wall_s"] = round(time.perf_counter() - t0, 1)
        pipeline.write_json(study_dir / "study.json", study)
        (study_dir / "study.md").write_text(markdown(study))
        note = None
        if args.figure:
            k = args.seeds[0]
            shown, why = figure_methods(study, args.figure_methods)
            fig = maps_figure(Path(cfgs[k].out_dir) / cfgs[k].name, cfgs[k], study, shown)
            fig.savefig(study_dir / FIGURE_FILE, dpi=100, bbox_inches="tight")
            note = f"{study_dir / FIGURE_FILE}: {', '.join(shown)} ({why}), seed{k}'s best.pt"
    except (UsageError, images.DataError, images.BadImageError, CheckpointError, WeightsUnavailableError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(study))
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
