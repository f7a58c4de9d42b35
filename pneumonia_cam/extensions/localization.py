"""Scoring the maps against the truth: does the CAM point at the lesion?

Tutorial section: *Class Activation Maps* (extension). The article shows a few heatmaps and judges
them by eye. The phantoms come with lesion masks, so here the maps are *measured*, each way on the
same upsampled, normalized map $S$ (``normalize_cam(upsample(M_c))``, values in $[0, 1]$) and a
ground-truth lesion mask $G$ (the set of lesion pixels) at the model's input resolution:

* **Pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum
  $p^* = \\arg\\max_p S(p)$ lies within $\\tau$ pixels of the lesion,
  $\\min_{q \\in G} \\lVert p^* - q \\rVert \\le \\tau$ (default $\\tau = 15$ px, the usual tolerance),
  computed with a Euclidean distance transform of the mask. Score: hits / images.
* **Energy-based pointing game** (Wang et al., Score-CAM, arXiv 1910.01279): the share of the map's
  positive mass inside the lesion, $\\sum_{p \\in G} S(p) / \\sum_p S(p)$. A map that knows nothing
  scores about the lesion's area fraction $|G| / (HW)$, reported beside it (``mean_lesion_fraction``),
  and their ratio is ``energy_over_area``: 1 for a map that knows nothing.
* **Zhou's box** (Zhou et al. 2016, Sec. 3.1): keep the pixels above 20 % of the map's maximum, take
  the largest connected component (8-connectivity), and its bounding box. Its **IoU** is with the
  *best-matching* ground-truth box — one box per connected lesion, as RSNA annotates one box per
  opacity — because Zhou's box is a single box and a patient may have several lesions; ``box_acc``
  is the share of images with IoU $\\ge 0.5$, the ILSVRC criterion Zhou et al. used.

Besides CAM and Grad-CAM at ``layer4`` (equal here, see :mod:`pneumonia_cam.extensions.gradcam`), two ways to
a finer 14x14 map at 224 px are scored: Grad-CAM one block earlier (``layer3``; no change to the
network) and the CAM of a network whose ``layer4`` is dilated instead of strided (output stride 16).

Baselines go through exactly the same code: a **centered Gaussian** (a map that only knows where
the middle of the image is, $\\sigma$ = a quarter of the image side) and a **random** map (uniform
noise on the CAM's own grid, seeded, upsampled the same way, so it is as smooth as a CAM).

:func:`evaluate_localization` runs it all for a model and a set of images with masks and returns a
JSON-ready dict (the train command writes it into ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torchvision import transforms as T

from pneumonia_cam.extensions.gradcam import grad_cams
from pneumonia_cam.steps.weighted_sum import cam_from_model, class_activation_map, head_linear, normalize_cam
from pneumonia_cam.steps.zoom import upsample
from pneumonia_cam.support.phantoms import mask_components

Box = tuple[int, int, int, int]  # (x, y, width, height) in pixels, RSNA's order
METHODS = ("cam", "gradcam", "gradcam_layer3", "dilated_cam", "gaussian", "random")
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for connected components


# --- the metrics, one (H, W) map and one (H, W) bool mask at a time ------------------------------


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: float = 15.0) -> bool:
    """Hit if the map's maximum is within ``tolerance`` pixels of a lesion pixel.

    Args:
        saliency: ``(H, W)`` map (only its argmax matters; ties go to the first pixel in row order).
        mask: ``(H, W)`` bool lesion mask, same size, at least one True pixel.
        tolerance: in pixels, Euclidean; 0 means the maximum must be on the lesion itself.
    """
    mask = _check_pair(saliency, mask)
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    # Distance of every pixel to the nearest lesion pixel (0 on the lesion).
    dist = ndimage.distance_transform_edt(~mask)  # (H, W)
    return bool(dist[y, x] <= tolerance)


def energy_pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's positive mass inside the lesion, in [0, 1] (0 for an all-zero map)."""
    mask = _check_pair(saliency, mask)
    s = np.clip(saliency, 0, None)
    total = float(s.sum())
    return float(s[mask].sum()) / total if total > 0 else 0.0


def zhou_box(saliency: np.ndarray, threshold: float = 0.2) -> Box | None:
    """Bounding box of the largest connected region above ``threshold`` x the map's maximum.

    Returns ``None`` when the map has no positive maximum (nothing to box).
    """
    peak = float(saliency.max())
    if peak <= 0:
        return None
    labels, n = ndimage.label(saliency >= threshold * peak, structure=_EIGHT)  # (H, W) ints
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # pixels per component
    largest = labels == (int(np.argmax(sizes)) + 1)
    return _bbox(largest)


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """One bounding box per connected lesion (8-connectivity), like RSNA's one box per opacity.

    The same boxes the phantoms' ``boxes/<split>.csv`` holds (:func:`pneumonia_cam.support.phantoms.mask_components`).
    """
    return mask_components(mask)[1]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` pixel boxes (inclusive pixel counts)."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def best_box_iou(box: Box | None, gt_boxes: Sequence[Box]) -> float:
    """IoU of ``box`` with the best-matching ground-truth box (0 if either is missing)."""
    if box is None or not gt_boxes:
        return 0.0
    return max(box_iou(box, g) for g in gt_boxes)


# --- baselines -----------------------------------------------------------------------------------


def gaussian_map(shape: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """Centered Gaussian, peak 1, ``sigma`` as a fraction of the shorter side: the "center" guess."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    s = sigma * min(H, W)
    return np.exp(-(((yy - (H - 1) / 2) ** 2) + ((xx - (W - 1) / 2) ** 2)) / (2 * s * s))


def random_maps(
    n: int, grid: tuple[int, int], size: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """``n`` uniform-noise maps on a CAM-sized ``grid``, upsampled like a CAM: ``(n, H, W)``."""
    coarse = torch.rand(n, *grid, generator=generator, dtype=torch.float64)  # (n, h, w)
    return normalize_cam(upsample(coarse, size))  # (n, h, w) -> (n, H, W)


# --- masks in input coordinates ------------------------------------------------------------------


def align_mask(mask: np.ndarray, transform: T.Compose | None = None) -> np.ndarray:
    """Apply a transform pipeline's *geometric* steps (Resize, CenterCrop) to a lesion mask.

    The model sees the image after ``make_transforms()["test"]``; the mask must be cut the same way
    to score a map against it. Tensor and colour steps (ToTensor, Normalize, ...) are skipped;
    random steps are refused (an evaluation pipeline has none).

    Args:
        mask: ``(H0, W0)`` bool mask at the file's resolution.
        transform: the evaluation ``transforms.Compose`` (``None``: returned as is).

    Returns:
        ``(H, W)`` bool mask at the model's input resolution.
    """
    mask = np.asarray(mask, dtype=bool)
    if transform is None:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255)  # mode "L"
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, (T.Resize, T.CenterCrop)):
            img = t(img)  # bilinear resize of a 0/255 mask, re-thresholded below
        elif type(t).__name__.startswith("Random"):
            raise ValueError(f"align_mask needs a deterministic (evaluation) pipeline, got {t}")
    return np.asarray(img) >= 128


# --- everything for one model ---------------------------------------------------------------------


def evaluate_localization(
    model: nn.Module,
    loader_or_images: torch.Tensor | Iterable,
    masks: Sequence[np.ndarray] | np.ndarray,
    methods: Sequence[str] = METHODS,
    *,
    dilated_model: nn.Module | None = None,
    target_class: int = 1,
    tolerance: float = 15.0,
    threshold: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Pointing game, energy pointing game and Zhou-box IoU for each method, on images with lesions.

    Args:
        model: trained classifier (``model.layer4``, ``model.fc[0]``), put in eval mode here.
        loader_or_images: a ``(N, 3, H, W)`` tensor of *normalized* images, or an iterable of
            batches (a test ``DataLoader`` without shuffling: ``(x, y)`` tuples or bare tensors).
        masks: ``N`` bool masks ``(H, W)`` at input resolution, in the same order (see
            :func:`align_mask`). Images whose mask is empty (NORMAL) are skipped before the forward
            pass, so a whole test set can be passed.
        methods: any of ``"cam"``, ``"gradcam"`` (on the logit, at ``layer4``),
            ``"gradcam_layer3"`` (Grad-CAM one block earlier: a 14x14 map at 224 px without
            changing the network), ``"dilated_cam"`` (CAM of ``dilated_model``, skipped when it
            is ``None``), ``"gaussian"``, ``"random"``.
        dilated_model: the same weights with a dilated ``layer4``, e.g.
            ``pneumonia_cam.steps.model.dilate_layer4_(copy.deepcopy(model))``, or a model trained
            with ``dilate_layer4=True``.
        target_class: whose map is scored: the ground-truth class, PNEUMONIA = 1, for every image.
        tolerance: pointing-game tolerance in pixels.
        threshold: Zhou's box threshold, a fraction of the map's maximum.
        batch_size: images per forward pass when a tensor is given.
        seed: seeds the random baseline.

    Returns:
        ``{"n_images", "n_skipped_no_lesion", "tolerance_px", "box_threshold", "target_class",
            "mean_lesion_fraction", "<method>": {"pointing_game", "energy_pointing_game", "box_iou",
            "box_acc", "energy_over_area", "map_size"}, "skipped_methods": [...]}``; plain numbers and lists.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    skipped = ["dilated_cam"] if dilated_model is None and "dilated_cam" in methods else []
    methods = [m for m in methods if m not in skipped]
    model.eval()
    if dilated_model is not None:
        dilated_model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    masks = [np.asarray(m, dtype=bool) for m in masks]

    scores: dict[str, dict[str, list]] = {m: {"pg": [], "epg": [], "iou": []} for m in methods}
    map_size: dict[str, list[int]] = {}
    fractions: list[float] = []
    n_seen = 0
    for x in _batches(loader_or_images, batch_size):
        batch_masks = masks[n_seen : n_seen + len(x)]
        if len(batch_masks) != len(x):
            raise ValueError(f"got more images than masks ({len(masks)})")
        n_seen += len(x)
        keep = [i for i, m in enumerate(batch_masks) if m.any()]  # lesion images only
        if not keep:
            continue
        x = x[keep].to(device)  # (b, 3, H, W)
        bm = [batch_masks[i] for i in keep]
        size = tuple(x.shape[-2:])
        if bm[0].shape != size:
            raise ValueError(f"masks are {bm[0].shape} but images {size}: use align_mask()")
        fractions += [float(m.mean()) for m in bm]

        maps: dict[str, torch.Tensor] = {}  # method -> (b, h, w) raw maps on the model's grid
        if {"cam", "random", "gradcam", "gradcam_layer3"} & set(methods):
            # One forward and one backward pass give Grad-CAM at layer4 (and layer3) and, from the
            # hooked layer4 output, the CAM: the same numbers as cam_from_model.
            layers = [model.layer4] + ([model.layer3] if "gradcam_layer3" in methods else [])
            g, feats, _ = grad_cams(model, layers, x, target_class)
            maps["cam"] = class_activation_map(feats[0], head_linear(model).weight, target_class)
            maps["gradcam"] = g[0]
            if len(g) > 1:
                maps["gradcam_layer3"] = g[1]
        if "dilated_cam" in methods:
            maps["dilated_cam"], _ = cam_from_model(dilated_model, x, target_class)
        for name, m in maps.items():
            map_size[name] = list(m.shape[-2:])
        full = {name: normalize_cam(upsample(m.double().cpu(), size)) for name, m in maps.items()}
        if "gaussian" in methods:
            full["gaussian"] = torch.from_numpy(gaussian_map(size)).expand(len(keep), *size)
        if "random" in methods:
            full["random"] = random_maps(len(keep), tuple(maps["cam"].shape[-2:]), size, gen)
            map_size["random"] = list(maps["cam"].shape[-2:])
        for name in methods:
            for s, gt in zip(full[name].numpy(), bm):
                scores[name]["pg"].append(pointing_game(s, gt, tolerance))
                scores[name]["epg"].append(energy_pointing_game(s, gt))
                scores[name]["iou"].append(best_box_iou(zhou_box(s, threshold), mask_boxes(gt)))
    if n_seen != len(masks):
        raise ValueError(f"got {n_seen} images but {len(masks)} masks")

    area = float(np.mean(fractions)) if fractions else float("nan")
    out: dict = {
        "n_images": len(fractions),
        "n_skipped_no_lesion": n_seen - len(fractions),
        "tolerance_px": float(tolerance),
        "box_threshold": float(threshold),
        "target_class": int(target_class),
        "mean_lesion_fraction": area,
    }
    for name in methods:
        s = scores[name]
        epg = _mean(s["epg"])
        out[name] = {
            "pointing_game": _mean(s["pg"]),
            "energy_pointing_game": epg,
            "energy_over_area": epg / area if fractions and area > 0 else float("nan"),
            "box_iou": _mean(s["iou"]),
            "box_acc": _mean([v >= 0.5 for v in s["iou"]]),
            "map_size": map_size.get(name, list(size) if fractions else []),
        }
    out["skipped_methods"] = skipped
    return out


# --- helpers --------------------------------------------------------------------------------------


def _batches(data: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield ``(b, 3, H, W)`` tensors from a tensor or from a loader of ``(x, y)`` / ``x``."""
    if isinstance(data, torch.Tensor):
        if data.ndim != 4:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(data.shape)}")
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _check_pair(saliency: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} differ in shape")
    if not mask.any():
        raise ValueError("the mask is empty: localization is only defined on lesion images")
    return mask


def _bbox(region: np.ndarray) -> Box:
    ys, xs = np.nonzero(region)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")
