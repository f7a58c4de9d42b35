"""The ceiling set by resolution: the best any map on a g x g grid could score on the phantoms' lesions.

    python docs/figures/ceiling_table.py            # prints lesson 04's two Markdown tables

For every PNEUMONIA test phantom of the demo preset (generated on first use, like the train command),
the *ideal* map on a $g \\times g$ grid is the lesion mask itself, cut to the model's input by the
evaluation transform (:func:`pneumonia_cam.extensions.localization.align_mask`) and averaged down to
the grid: each cell holds the lesion's share of its $s \\times s$ block, $s = H / g$,

$$
I_g(i, j) = \\frac{1}{s^2} \\sum_{y = s i}^{s i + s - 1} \\sum_{x = s j}^{s j + s - 1} G(y, x),
$$

with $G$ the 0/1 lesion mask at $H \\times H$ px. That map is then upsampled
(:func:`pneumonia_cam.steps.zoom.upsample`, half-pixel bilinear), normalized
(:func:`pneumonia_cam.steps.weighted_sum.normalize_cam`) and scored exactly as a CAM is
(hit at 0 px, pointing game at 15 px, energy over lesion area, Zhou-box IoU). No model is involved.
A second table scores the baselines of :mod:`pneumonia_cam.extensions.localization` on the same
images: the floor a method must clear, where the first table is the ceiling it cannot pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pneumonia_cam.extensions import localization as loc
from pneumonia_cam.pipeline import load_data
from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.steps.weighted_sum import normalize_cam
from pneumonia_cam.steps.zoom import upsample
from pneumonia_cam.support import phantoms
from pneumonia_cam.support.config import PRESETS

GRIDS = (7, 14, 28, 56)
COLUMNS = (("hit_0px", "hit 0 px"), ("hit_15px", "hit 15 px"), ("energy_over_area", "energy / lesion area"),
           ("box_iou", "Zhou-box IoU"))


def ideal_map(mask: np.ndarray, grid: int) -> np.ndarray:
    """The lesion mask averaged down to ``grid`` x ``grid`` cells (block means).

    Args:
        mask: ``(H, W)`` bool lesion mask at the model's input resolution; ``grid`` divides H and W.
        grid: $g$, cells per side.

    Returns:
        ``(g, g)`` float64 map: the lesion's share of each cell, in [0, 1].
    """
    H, W = mask.shape
    if H % grid or W % grid:
        raise ValueError(f"grid {grid} does not divide the {H}x{W} mask; pick a grid that divides the image size")
    s, t = H // grid, W // grid
    return mask.astype(np.float64).reshape(grid, s, grid, t).mean(axis=(1, 3))  # (H, W) -> (g, s, g, t) -> (g, g)


def lesion_masks(data_dir: str | None = None, image_size: int = 224) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The aligned lesion and lung masks of the test split's PNEUMONIA images, in file order.

    Args:
        data_dir: a phantom root (Kaggle layout with ``masks/`` and ``lungs/``); ``None``: the demo
            preset's phantoms.
        image_size: the model's input size $H$.

    Returns:
        lesions (list): one ``(H, H)`` bool lesion mask per lesion image (images without a lesion
            pixel are left out).
        lungs (list): the matching ``(H, H)`` bool lung-field masks.
    """
    cfg = dataclasses.replace(PRESETS["demo"], data_dir=data_dir, image_size=image_size)
    root, datasets = load_data(cfg, progress=False)
    tf = make_transforms(image_size)["test"]
    lesions, lungs = [], []
    for path, y in datasets["test"].samples:
        if y != 1:
            continue
        stem = Path(path).stem
        mask = loc.align_mask(phantoms.load_mask(root, "test", stem), tf)  # (H0, W0) -> (H, H)
        if mask.any():
            lesions.append(mask)
            lungs.append(loc.align_mask(phantoms.load_lung_mask(root, "test", stem), tf))
    return lesions, lungs


def score_maps(maps: np.ndarray, masks: Sequence[np.ndarray], tolerance: float = 15.0) -> dict[str, float]:
    """Score full-size maps against lesion masks the way the project scores a CAM.

    Args:
        maps: ``(N, H, W)`` maps, normalized to [0, 1].
        masks: ``N`` bool ``(H, W)`` lesion masks, each with at least one lesion pixel.
        tolerance: the pointing game's tolerance in pixels.

    Returns:
        ``{"hit_0px", "hit_15px", "energy_over_area", "box_iou"}``: means over the images (energy
            over area as the mean energy divided by the mean lesion fraction, as in
            :func:`pneumonia_cam.extensions.localization.evaluate_localization`).
    """
    per_image = [loc.map_scores(s, mask, tolerance) for s, mask in zip(maps, masks)]
    mean = {key: float(np.mean([p[key] for p in per_image])) for key in ("hit_0px", "hit_15px", "energy", "box_iou")}
    area = float(np.mean([mask.mean() for mask in masks]))
    return {"hit_0px": mean["hit_0px"], "hit_15px": mean["hit_15px"],
            "energy_over_area": mean["energy"] / area, "box_iou": mean["box_iou"]}


def ceiling_maps(masks: Sequence[np.ndarray], grid: int) -> np.ndarray:
    """The ideal map of each mask on ``grid``, upsampled and normalized as a CAM is.

    Args:
        masks: ``N`` bool ``(H, W)`` lesion masks of one size.
        grid: $g$, cells per side.

    Returns:
        ``(N, H, W)`` float64 maps in [0, 1].
    """
    coarse = torch.from_numpy(np.stack([ideal_map(m, grid) for m in masks]))  # (N, g, g)
    return normalize_cam(upsample(coarse, masks[0].shape)).numpy()  # (N, g, g) -> (N, H, W)


def baseline_maps(masks: Sequence[np.ndarray], lungs: Sequence[np.ndarray], grid: int = 7) -> dict[str, np.ndarray]:
    """The baselines of :mod:`pneumonia_cam.extensions.localization` on the same images.

    Args:
        masks: ``N`` bool ``(H, W)`` lesion masks of one size.
        lungs: the matching lung-field masks.
        grid: the random map's grid (the CAM's).

    Returns:
        ``{name: (N, H, W) map}`` for the centred Gaussian, the random map, the lung prior and the
            correct lung.
    """
    size = masks[0].shape
    return {
        "centred Gaussian": np.broadcast_to(loc.gaussian_map(size), (len(masks), *size)),
        f"random ({grid} x {grid}, seed 0)": loc.random_maps(len(masks), (grid, grid), size,
                                                             torch.Generator().manual_seed(0)).numpy(),
        "lung prior (both lungs)": np.stack([loc.lung_prior_map(lung) for lung in lungs]),
        "correct lung": np.stack([loc.correct_lung_map(lung, m) for lung, m in zip(lungs, masks)]),
    }


def markdown_table(rows: dict[str, dict[str, float]], first: str = "grid") -> str:
    """A Markdown table of :func:`score_maps` results, one row per map."""
    lines = [f"| {first} | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['hit_0px']:.3f} | {r['hit_15px']:.3f} | "
                     f"{r['energy_over_area']:.1f}x | {r['box_iou']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The best a g x g map could score on the test phantoms' lesions.")
    p.add_argument("--data-dir", default=None, help="a phantom root (default: the demo preset's phantoms)")
    p.add_argument("--image-size", type=int, default=224, help="the model's input size (default: 224)")
    p.add_argument("--grids", type=int, nargs="+", default=list(GRIDS), help="grid sizes (default: 7 14 28 56)")
    args = p.parse_args(argv)
    masks, lungs = lesion_masks(args.data_dir, args.image_size)
    if not masks:
        print(f"error: no lesion masks in the test split of {args.data_dir or 'the demo phantoms'}", file=sys.stderr)
        return 2
    print(markdown_table({f"{g} x {g}": score_maps(ceiling_maps(masks, g), masks) for g in args.grids}))
    print()
    print(markdown_table({name: score_maps(m, masks) for name, m in baseline_maps(masks, lungs).items()},
                         first="baseline"))
    print(f"\n{len(masks)} PNEUMONIA test images, {args.image_size} px.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
