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
* **Hit rate at 0 px** (Saporta et al., Nature Machine Intelligence 2022, CheXlocalize): the
  pointing game with no tolerance, $p^* \\in G$. On a 224 px input one 7x7 cell is 32 px wide, so
  the 15 px tolerance is generous.
* **mIoU at a validation-chosen threshold** (Saporta et al. 2022): the pixel IoU of $\\{S \\ge t\\}$
  with $G$, averaged over images, at the level $t$ of :data:`THRESHOLDS` with the best mean IoU on
  the *validation* lesion images; choosing $t$ on test data inflates the score (Choe et al., CVPR
  2020).
* :func:`bootstrap_ci`: a 95 % percentile interval over images for any of these means.

The maps come from :mod:`pneumonia_cam.extensions.saliency` (CAM, Grad-CAM, LayerCAM, flips, the
contrastive map, the dilated CAM). Baselines go through exactly the same code: a **centered
Gaussian** (a map that only knows where the middle of the image is, $\\sigma$ = a quarter of the
image side), a **random** map (uniform noise on the CAM's own grid, seeded, upsampled the same way,
so it is as smooth as a CAM), the **lung prior** (uniform over both lung fields) and the
**correct lung** (uniform over the lung that holds the lesion: it knows the side and nothing else).
A method localizes only where it beats the correct lung.

:func:`image_scores` scores every method on every lesion image; :func:`evaluate_localization`
averages them into a JSON-ready dict (the train command writes it into ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torchvision import transforms as T

from tqdm.auto import tqdm

from pneumonia_cam.extensions import saliency
from pneumonia_cam.steps.weighted_sum import normalize_cam
from pneumonia_cam.steps.zoom import upsample
from pneumonia_cam.support.phantoms import mask_components

Box = tuple[int, int, int, int]  # (x, y, width, height) in pixels, RSNA's order
#: Maps that need no model: they set the floor a method must clear.
BASELINES = ("gaussian", "random", "lung_prior", "correct_lung")
#: Everything that can be scored: the model's maps (:data:`pneumonia_cam.extensions.saliency.METHODS`)
#: and the baselines.
METHODS = (*saliency.METHODS, *BASELINES)
#: What the train command scores (one forward + backward pass and one forward of the dilated copy).
DEFAULT_METHODS = ("cam", "gradcam", "gradcam_layer3", "dilated_cam", *BASELINES)
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
    return _peak_within(saliency, lesion_distance(mask), tolerance)


def lesion_distance(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` Euclidean distance in pixels from every pixel to the nearest lesion pixel (0 on it)."""
    return ndimage.distance_transform_edt(~mask)


def _peak_within(saliency: np.ndarray, distance: np.ndarray, tolerance: float) -> bool:
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)  # ties: the first pixel in row order
    return bool(distance[y, x] <= tolerance)


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


def lung_prior_map(lung_mask: np.ndarray) -> np.ndarray:
    """Uniform over both lung fields: a map that knows where the lungs are and nothing else.

    Its energy inside the lesion is $|G \\cap L| / |L|$ ($L$ the lung pixels), the score to beat
    for a map that "looks at the lungs".

    Args:
        lung_mask: ``(H, W)`` bool lung-field mask.

    Returns:
        ``(H, W)`` float map, 1 on the lungs, 0 elsewhere.
    """
    lung = np.asarray(lung_mask, dtype=bool)
    if not lung.any():
        raise ValueError("the lung mask is empty; pass the phantom's lungs/<split>/<stem>.png mask")
    return lung.astype(np.float64)


def correct_lung_map(lung_mask: np.ndarray, lesion_mask: np.ndarray) -> np.ndarray:
    """Uniform over the lung field that holds the lesion: a map that knows the side and nothing else.

    The lung field is the connected component (8-connectivity) of the lung mask with the largest
    overlap with the lesion; a lesion that touches no lung pixel gets both lungs.

    Args:
        lung_mask: ``(H, W)`` bool lung-field mask (both lungs).
        lesion_mask: ``(H, W)`` bool lesion mask.

    Returns:
        ``(H, W)`` float map, 1 on that lung, 0 elsewhere.
    """
    lung = lung_prior_map(lung_mask) > 0
    lesion = np.asarray(lesion_mask, dtype=bool)
    if lesion.shape != lung.shape:
        raise ValueError(f"lung mask {lung.shape} and lesion mask {lesion.shape} differ in shape")
    labels, n = ndimage.label(lung, structure=_EIGHT)  # (H, W) ints, 0 = background
    overlap = np.bincount(labels[lesion], minlength=n + 1)[1:]  # lesion pixels per lung component
    if overlap.max(initial=0) == 0:
        return lung.astype(np.float64)
    return (labels == int(np.argmax(overlap)) + 1).astype(np.float64)


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


# --- more metrics: no tolerance, a threshold chosen on validation, an interval over images ---------

#: The grid of levels a thresholded map is tried at (on the normalized map, values in [0, 1]).
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


def hit_0px(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """CheXlocalize's hit (Saporta et al. 2022): the map's single maximum lies on the lesion itself.

    The pointing game with no tolerance, $S$'s argmax $p^* \\in G$ (ties go to the first pixel in
    row order, so a flat map points at its top-left corner).

    Args:
        saliency: ``(H, W)`` map.
        mask: ``(H, W)`` bool lesion mask, at least one True pixel.

    Returns:
        Whether the maximum is a lesion pixel.
    """
    mask = _check_pair(saliency, mask)
    return bool(mask.flat[int(np.argmax(saliency))])


def threshold_ious(saliency: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Pixel IoU of the map thresholded at each level $t$ with the lesion mask.

    $$
    \\mathrm{IoU}(t) = \\frac{|\\{S \\ge t\\} \\cap G|}{|\\{S \\ge t\\} \\cup G|}
    $$

    with $S$ the normalized map and $G$ the lesion pixels (0 when the thresholded map is empty).

    Args:
        saliency: ``(H, W)`` normalized map, values in [0, 1].
        mask: ``(H, W)`` bool lesion mask, at least one True pixel.
        thresholds: the levels $t$.

    Returns:
        ``(T,)`` IoU per level.
    """
    mask = _check_pair(saliency, mask)
    t = np.asarray(thresholds, dtype=float)[:, None]  # (T, 1)
    s, g = saliency.ravel()[None], mask.ravel()[None]  # (1, H*W) each
    pred = s >= t  # (T, H*W)
    inter = (pred & g).sum(1)
    union = (pred | g).sum(1)
    return inter / union  # union >= |G| > 0


@dataclass(frozen=True)
class Lesion:
    """One lesion mask and what every map is scored against, computed once per image
    (:meth:`of`) however many maps are scored on it."""

    mask: np.ndarray  # (H, W) bool, at least one True pixel
    distance: np.ndarray  # (H, W) pixels to the nearest lesion pixel (lesion_distance)
    boxes: list[Box]  # one per connected lesion (mask_boxes)

    @classmethod
    def of(cls, mask: np.ndarray) -> Lesion:
        mask = np.asarray(mask, dtype=bool)
        return cls(mask, lesion_distance(mask), mask_boxes(mask))


def map_scores(saliency: np.ndarray, mask: np.ndarray | Lesion, tolerance: float = 15.0, threshold: float = 0.2,
               thresholds: Sequence[float] = ()) -> dict:
    """Every metric of one normalized map against one lesion mask.

    Args:
        saliency: ``(H, W)`` normalized map, values in [0, 1].
        mask: ``(H, W)`` bool lesion mask, at least one True pixel; or its :class:`Lesion`, when several
            maps are scored against the same mask.
        tolerance: pointing-game tolerance in pixels.
        threshold: Zhou's box threshold, a fraction of the map's maximum.
        thresholds: the levels of :func:`threshold_ious`; none (the default) skips them.

    Returns:
        ``{"hit_15px", "hit_0px", "energy", "box_iou"}``, plus ``"ious"`` (a list, one IoU per
            level) when ``thresholds`` is not empty.
    """
    lesion = mask if isinstance(mask, Lesion) else Lesion.of(mask)
    mask = _check_pair(saliency, lesion.mask)
    out = {"hit_15px": _peak_within(saliency, lesion.distance, tolerance), "hit_0px": hit_0px(saliency, mask),
           "energy": energy_pointing_game(saliency, mask),
           "box_iou": best_box_iou(zhou_box(saliency, threshold), lesion.boxes)}
    if len(thresholds):
        out["ious"] = threshold_ious(saliency, mask, thresholds).tolist()
    return out


def choose_threshold(val_ious: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, int]:
    """The level with the best mean IoU over the *validation* images (Saporta et al. 2022).

    Choosing it on test data inflates the score (Choe et al., CVPR 2020); the test mIoU is then read
    at this level. Ties go to the lowest level.

    Args:
        val_ious: ``(N, T)`` IoU of each validation lesion image at each level (:func:`threshold_ious`).
        thresholds: the ``T`` levels.

    Returns:
        threshold (float): the chosen level $t^*$.
        index (int): its position in ``thresholds``.
    """
    val_ious = np.asarray(val_ious, dtype=float)
    if val_ious.ndim != 2 or val_ious.shape[1] != len(thresholds) or len(val_ious) == 0:
        raise ValueError(f"val_ious must be (N >= 1, {len(thresholds)}), got {val_ious.shape}")
    i = int(np.argmax(val_ious.mean(0)))
    return float(thresholds[i]), i


def bootstrap_ci(
    values: np.ndarray,
    denominators: np.ndarray | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval over images of a mean (or a ratio of means), pooled over seeds.

    Images are resampled with replacement, the same images for every seed (each seed scores the same
    test images), and the statistic is the mean over seeds of each seed's mean over the resample,

    $$
    \\theta^* = \\frac{1}{S} \\sum_s \\frac{\\sum_{i \\in I^*} v_{s,i}}{\\sum_{i \\in I^*} d_{s,i}}
    $$

    with $I^*$ the resampled image indices, $v$ the values and $d$ the denominators (all ones
    without ``denominators``: a plain mean).

    Args:
        values: ``(N,)`` per-image values, or ``(S, N)``: one row per seed.
        denominators: same shape, for a ratio of means (e.g. energy over lesion area).
        n_resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: seeds the resampling.

    Returns:
        low (float): the lower end.
        high (float): the upper end.
    """
    v = np.atleast_2d(np.asarray(values, dtype=float))  # (S, N)
    d = np.ones_like(v) if denominators is None else np.atleast_2d(np.asarray(denominators, dtype=float))
    if d.shape != v.shape or v.shape[1] == 0:
        raise ValueError(f"values {v.shape} and denominators {d.shape} must match and hold images")
    idx = np.random.default_rng(seed).integers(0, v.shape[1], size=(n_resamples, v.shape[1]))  # (R, N)
    stats = (v[:, idx].sum(-1) / d[:, idx].sum(-1)).mean(0)  # (S, R, N) -> (S, R) -> (R,)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


# --- everything for one model ---------------------------------------------------------------------


def image_scores(
    model: nn.Module,
    loader_or_images: torch.Tensor | Iterable,
    masks: Sequence[np.ndarray] | np.ndarray,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    lung_masks: Sequence[np.ndarray] | None = None,
    dilated_model: nn.Module | None = None,
    target_class: int = 1,
    tolerance: float = 15.0,
    threshold: float = 0.2,
    thresholds: Sequence[float] = THRESHOLDS,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Every metric of every method, per lesion image (:func:`map_scores`): what
    :func:`evaluate_localization` averages.

    Arguments as in :func:`evaluate_localization`, plus ``thresholds`` (the levels of
    :func:`threshold_ious`; an empty sequence skips them and leaves ``"ious"`` empty) and
    ``progress`` (a tqdm bar over batches).

    Returns:
        ``{"area": [lesion fraction per image], "n_seen", "skipped_methods", "map_size": {method:
            [h, w]}, "scores": {method: {"hit_15px", "hit_0px", "energy", "box_iou": [per image],
            "ious": [[T per image]]}}}``.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    skipped = [m for m in methods if (m == "dilated_cam" and dilated_model is None)
               or (m in ("lung_prior", "correct_lung") and lung_masks is None)]
    methods = [m for m in methods if m not in skipped]
    model_methods = [m for m in saliency.METHODS if m in methods]
    if "random" in methods and "cam" not in model_methods:
        model_methods.append("cam")  # the random map takes the CAM's grid
    model.eval()
    if dilated_model is not None:
        dilated_model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if lung_masks is not None:
        lung_masks = [np.asarray(m, dtype=bool) for m in lung_masks]
        if len(lung_masks) != len(masks):
            raise ValueError(f"got {len(lung_masks)} lung masks for {len(masks)} lesion masks")

    scores = {m: {"hit_15px": [], "hit_0px": [], "energy": [], "box_iou": [], "ious": []} for m in methods}
    map_size: dict[str, list[int]] = {}
    area: list[float] = []
    n_seen = 0
    for x in tqdm(_batches(loader_or_images, batch_size), desc="maps", unit="batch", disable=not progress,
                  leave=False):
        batch_masks = masks[n_seen : n_seen + len(x)]
        if len(batch_masks) != len(x):
            raise ValueError(f"got more images than masks ({len(masks)})")
        keep = [i for i, m in enumerate(batch_masks) if m.any()]  # lesion images only
        bm = [batch_masks[i] for i in keep]
        lungs = [lung_masks[n_seen + i] for i in keep] if lung_masks is not None else None
        n_seen += len(x)
        if not keep:
            continue
        x = x[keep].to(device)  # (b, 3, H, W)
        size = tuple(x.shape[-2:])
        if bm[0].shape != size:
            raise ValueError(f"masks are {bm[0].shape} but images {size}: use align_mask()")
        area += [float(m.mean()) for m in bm]

        raw = saliency.saliency_maps(model, x, model_methods, target_class, dilated_model)  # (b, h, w) each
        for name, m in raw.items():
            map_size[name] = list(m.shape[-2:])
        full = {name: m.numpy() for name, m in normalized_maps(raw, size).items()}  # (b, H, W) each
        if "gaussian" in methods:
            full["gaussian"] = np.broadcast_to(gaussian_map(size), (len(keep), *size))
        if "random" in methods:
            full["random"] = random_maps(len(keep), tuple(map_size["cam"]), size, gen).numpy()
            map_size["random"] = map_size["cam"]
        if "lung_prior" in methods:
            full["lung_prior"] = np.stack([lung_prior_map(lung) for lung in lungs])
        if "correct_lung" in methods:
            full["correct_lung"] = np.stack([correct_lung_map(lung, m) for lung, m in zip(lungs, bm)])
        lesions = [Lesion.of(m) for m in bm]  # once per image, shared by every method
        for name in methods:
            for s, lesion in zip(full[name], lesions):
                for key, value in map_scores(s, lesion, tolerance, threshold, thresholds).items():
                    scores[name][key].append(value)
    if n_seen != len(masks):
        raise ValueError(f"got {n_seen} images but {len(masks)} masks")
    for name in methods:
        map_size.setdefault(name, [])
    return {"area": area, "n_seen": n_seen, "skipped_methods": skipped, "map_size": map_size, "scores": scores}


def normalized_maps(raw: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The maps as they are scored: $S = \\mathrm{minmax}(\\mathrm{ReLU}(\\mathrm{upsample}(M)))$.

    Args:
        raw: ``{method: (B, h, w)}`` maps on their own grids (:func:`~pneumonia_cam.extensions.saliency.saliency_maps`).
        size: ``(H, W)``, the model's input size.

    Returns:
        ``{method: (B, H, W)}`` float64 CPU maps, values in [0, 1].
    """
    return {name: normalize_cam(upsample(m.double().cpu(), size)) for name, m in raw.items()}  # (B, h, w) -> (B, H, W)


def evaluate_localization(
    model: nn.Module,
    loader_or_images: torch.Tensor | Iterable,
    masks: Sequence[np.ndarray] | np.ndarray,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    lung_masks: Sequence[np.ndarray] | None = None,
    dilated_model: nn.Module | None = None,
    target_class: int = 1,
    tolerance: float = 15.0,
    threshold: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Pointing game (at ``tolerance`` and at 0 px), energy and Zhou-box IoU per method, on lesion images.

    Args:
        model: trained classifier (``model.layer3``/``layer4``, ``model.fc[0]``), put in eval mode here.
        loader_or_images: a ``(N, 3, H, W)`` tensor of *normalized* images, or an iterable of
            batches (a test ``DataLoader`` without shuffling: ``(x, y)`` tuples or bare tensors).
        masks: ``N`` bool masks ``(H, W)`` at input resolution, in the same order (see
            :func:`align_mask`). Images whose mask is empty (NORMAL) are skipped before the forward
            pass, so a whole test set can be passed.
        methods: names from :data:`METHODS`: the maps of
            :func:`pneumonia_cam.extensions.saliency.saliency_maps` (``"dilated_cam"`` is skipped
            when ``dilated_model`` is ``None``) and the baselines ``"gaussian"``, ``"random"``,
            ``"lung_prior"`` and ``"correct_lung"`` (skipped without ``lung_masks``).
        lung_masks: ``N`` bool lung-field masks aligned like ``masks``
            (:func:`pneumonia_cam.support.phantoms.load_lung_mask`), for the lung baselines.
        dilated_model: the same weights with a dilated ``layer4``, e.g.
            ``pneumonia_cam.extensions.map_model.dilate_layer4_(copy.deepcopy(model))``, or a model trained
            with ``dilate_layer4=True``.
        target_class: whose map is scored: the ground-truth class, PNEUMONIA = 1, for every image.
        tolerance: pointing-game tolerance in pixels.
        threshold: Zhou's box threshold, a fraction of the map's maximum.
        batch_size: images per forward pass when a tensor is given.
        seed: seeds the random baseline.

    Returns:
        ``{"n_images", "n_skipped_no_lesion", "tolerance_px", "box_threshold", "target_class",
            "mean_lesion_fraction", "<method>": {"pointing_game", "hit_0px", "energy_pointing_game",
            "box_iou", "box_acc", "energy_over_area", "map_size"}, "skipped_methods": [...]}``;
            plain numbers and lists.
    """
    # No thresholded IoUs: nothing here averages them (the study does, with a threshold from val).
    res = image_scores(model, loader_or_images, masks, methods, lung_masks=lung_masks,
                       dilated_model=dilated_model, target_class=target_class, tolerance=tolerance,
                       threshold=threshold, thresholds=(), batch_size=batch_size, seed=seed)
    n = len(res["area"])
    area = _mean(res["area"])
    out: dict = {
        "n_images": n,
        "n_skipped_no_lesion": res["n_seen"] - n,
        "tolerance_px": float(tolerance),
        "box_threshold": float(threshold),
        "target_class": int(target_class),
        "mean_lesion_fraction": area,
    }
    for name, s in res["scores"].items():
        epg = _mean(s["energy"])
        out[name] = {
            "pointing_game": _mean(s["hit_15px"]),
            "hit_0px": _mean(s["hit_0px"]),
            "energy_pointing_game": epg,
            "energy_over_area": epg / area if n and area > 0 else float("nan"),
            "box_iou": _mean(s["box_iou"]),
            "box_acc": _mean([v >= 0.5 for v in s["box_iou"]]),
            "map_size": res["map_size"][name] or (list(np.shape(masks[0])) if n else []),
        }
    out["skipped_methods"] = res["skipped_methods"]
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
