"""``python -m pneumonia_cam.cam``: Class Activation Maps for your own X-rays, from a trained run.

Tutorial section: *Class Activation Maps* — the article's ``predict_img`` + plot, as a command::

    python -m pneumonia_cam.cam IMAGE_OR_DIR [...] --checkpoint runs/demo/best.pt --out cams/ \\
        [--class pred|pneumonia|normal] [--method cam|gradcam]

For each image (folders are searched recursively; hidden files and ``__MACOSX`` are skipped) it
writes ``OUT/<name>_<method>.png`` — the network's input (after the evaluation Resize + CenterCrop)
in gray with the map in jet on top — and one row of ``OUT/predictions.csv``: file, predicted class,
p_normal, p_pneumonia, the class whose map is shown, the method, the overlay's name, and what the
model was trained on (``trained_on``: ``phantoms``, ``real`` or ``unknown``, from the checkpoint's
config). A model trained on the generated phantoms has never seen an X-ray: for it the command also
prints one warning line on stderr, because its predictions on real X-rays are meaningless.

Preprocessing is *exactly* the evaluation pipeline the model was tested with
(``images.load_image`` + ``data.make_transforms(size)["test"]``, ImageNet normalization included;
the article's CAM step skipped the normalization, which changes predictions — see
``lessons/03_cam/test_article_pitfalls.py``). Any size and mode (grayscale, RGB, 16-bit, palette)
works. A file that cannot be read (empty, truncated, not an image, DICOM, over PIL's decompression-bomb
limit) gets one line on stderr; the others are still processed, and the exit code is then 2. An input
path that does not exist stops the command before any work (exit 2): it is a typo, not a bad file.
This module only wires: the maths is in ``weighted_sum``, ``gradcam``, ``zoom`` and ``overlay``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import torch

from pneumonia_cam import CLASSES
from pneumonia_cam.extensions.gradcam import MAP_METHODS, class_maps
from pneumonia_cam.extensions.map_model import load_model
from pneumonia_cam.steps import data
from pneumonia_cam.steps.overlay import save_overlay
from pneumonia_cam.support import images
from pneumonia_cam.support.checkpoint import CheckpointError, resolve_run_checkpoint
from pneumonia_cam.support.runtime import resolve_device

CSV_FIELDS = ("file", "predicted", "p_normal", "p_pneumonia", "class_shown", "method", "overlay", "trained_on")
_CLASS_CHOICES = {"pred": None, "normal": CLASSES.index("NORMAL"), "pneumonia": CLASSES.index("PNEUMONIA")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pneumonia_cam.cam",
        description="Predict NORMAL/PNEUMONIA for chest X-rays and save Class Activation Map overlays.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (recursive)")
    p.add_argument("--checkpoint", required=True,
                   help="a best.pt/last.pt written by pneumonia_cam.train, or its run folder (then its best.pt)")
    p.add_argument("--out", required=True, help="output folder for the overlays and predictions.csv")
    p.add_argument("--class", dest="cls", choices=tuple(_CLASS_CHOICES), default="pred",
                   help="whose map to draw: the predicted class (default) or a fixed one")
    p.add_argument("--method", choices=MAP_METHODS, default="cam",
                   help="cam (Zhou et al. 2016, the article) or gradcam (on the logit)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    return p


def find_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files (junk skipped), sorted.

    DICOM files are included so that they are reported ("convert it to PNG/JPEG first"), not ignored.

    Raises:
        images.DataError: an input path does not exist.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not images._is_junk(d))
                found += [Path(root) / f for f in sorted(files)
                          if not images._is_junk(f)
                          and f.lower().endswith(images.IMG_EXTENSIONS + images.DICOM_EXTENSIONS)]
        elif path.exists():
            found.append(path)  # named explicitly: try it whatever its extension
        else:
            raise images.DataError(f"{path}: no such file or folder; fix: pass an image file or a folder of images")
    return found


def _overlay_name(path: Path, method: str, taken: set[str]) -> str:
    """``<stem>_<method>.png``, made unique when two inputs share a stem."""
    name, i = f"{path.stem}_{method}.png", 1
    while name in taken:
        i += 1
        name = f"{path.stem}-{i}_{method}.png"
    taken.add(name)
    return name


def trained_on(config: dict | None) -> str:
    """The kind of data a checkpoint was trained on, from its saved training config.

    ``"phantoms"``: ``data_dir`` was None (the generated set) or names a folder holding the phantom
    generator's ``phantoms.json``; ``"real"``: any other ``data_dir``; ``"unknown"``: no config (a
    checkpoint not written by ``pneumonia_cam.train``).
    """
    if not config or "data_dir" not in config:
        return "unknown"
    if config["data_dir"] is None or (Path(config["data_dir"]) / "phantoms.json").is_file():
        return "phantoms"
    return "real"


def run(args: argparse.Namespace) -> int:
    files = find_images(args.inputs)
    if not files:
        raise images.DataError(f"no image files found in {' '.join(args.inputs)}; fix: pass .png/.jpeg files or folders")
    try:
        device = resolve_device(args.device)
    except RuntimeError:
        raise images.DataError(f"--device {args.device}: not a device; fix: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise images.DataError(f"--device {args.device}: CUDA is not available here; fix: use --device cpu")
    checkpoint, note = resolve_run_checkpoint(args.checkpoint)
    if note:
        print(f"note: {note}")
    model, payload = load_model(checkpoint, map_location=device)
    size = int((payload.get("config") or {}).get("image_size", 224))
    kind = trained_on(payload.get("config"))
    if kind == "phantoms":
        print(f"warning: {checkpoint} was trained on synthetic phantoms, not X-rays: its predictions on "
              "real chest X-rays are meaningless (train with --data-dir on real images for that)", file=sys.stderr)
    transform = data.make_transforms(size)["test"]  # exactly the evaluation preprocessing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    class_idx = _CLASS_CHOICES[args.cls]
    failed, taken, rows = 0, set(), []

    for start in range(0, len(files), args.batch_size):
        batch, tensors = [], []
        for path in files[start : start + args.batch_size]:
            try:
                tensors.append(transform(images.load_image(path)))  # (3, size, size)
                batch.append(path)
            except images.BadImageError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed += 1
        if not tensors:
            continue
        x = torch.stack(tensors).to(device)  # (b, 3, size, size)
        cams, log_probs, shown = class_maps(model, x, args.method, class_idx)  # (b, h, w), (b, C), (b,)
        probs = log_probs.exp().cpu()
        for i, path in enumerate(batch):
            pred, c = int(probs[i].argmax()), int(shown[i])
            name = _overlay_name(path, args.method, taken)
            title = f"{path.name}\npred {CLASSES[pred]} p={float(probs[i, pred]):.2f}; map: {CLASSES[c]}"
            save_overlay(out / name, x[i].cpu(), cams[i].cpu(), title=title)
            rows.append({"file": str(path), "predicted": CLASSES[pred], "p_normal": f"{float(probs[i, 0]):.6f}",
                         "p_pneumonia": f"{float(probs[i, 1]):.6f}", "class_shown": CLASSES[c],
                         "method": args.method, "overlay": name, "trained_on": kind})

    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} overlays and predictions.csv written to {out}/"
          + (f"; {failed} file(s) could not be read" if failed else ""))
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 ok, 2 bad input or any unreadable image)."""
    args = build_parser().parse_args(argv)  # exits 2 on bad flags
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (images.DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
