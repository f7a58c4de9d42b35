"""Procedural chest X-ray phantoms: the offline stand-in for the article's Kaggle data set.

The tutorial trains on the Kaggle "chest-xray-pneumonia" folders (Kermany et al., Cell 2018). Those
cannot be downloaded on an offline machine, so this module *draws* chest radiographs instead and writes
them in exactly the Kaggle layout, so that the article's loading code (``pneumonia_cam.steps.data``) reads both
without knowing which it got:

    ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/phantom-<split>-<index>.png   8-bit grayscale
    ROOT/masks/<split>/PNEUMONIA/<name>.png     lesion mask, 255 = lesion (the CAM's ground truth)
    ROOT/lungs/<split>/<name>.png               lung-field mask, 255 = lung (both classes)
    ROOT/boxes/<split>.csv                      RSNA format: patientId,x,y,width,height,Target
    ROOT/phantoms.json                          generator version + parameters (written last)

Each image is its own patient (the file stem is the patient id), so no split can leak a patient.

How an image is drawn
---------------------
Everything is a *density* map $D(x, y)$ (bright = dense, as on a radiograph) built in canonical
coordinates $(u, v) \\in [-1, 1]^2$ that are themselves rotated, scaled and shifted per image, so the
anatomy is never in the same place twice:

1. body outline with neck and shoulders, soft tissue thicker in the middle;
2. two lung fields (air: density subtracted) of random width, height and apex taper, cut from below by
   two diaphragm domes (the patient's right, image left, higher; both move with the depth of
   inspiration) and medially by the mediastinum and a heart shadow that bulges into the image-right lung;
3. posterior ribs (curved periodic bands), two clavicles, the spine with vertebral bodies;
4. normal density variation on *both* classes: faint vascular texture, denser lower zones, breast
   shadows and scapulae over the lungs, each at random strength;
5. PNEUMONIA only: 1-3 consolidations (table below), added inside the lung fields;
6. acquisition: Gaussian blur, noise, exposure offset, contrast and gamma, then a burned-in side marker
   ("L" or "R") at a random place outside the lungs, on *both* classes so it is no shortcut.

Difficulty
----------
Density units: soft tissue ~0.4-0.7, lung air depth 0.26-0.44 (subtracted), ribs +0.08-0.12.

| quantity | range (uniform unless noted) | why |
|---|---|---|
| consolidations per image | 1, 2, 3 (p = .5, .3, .2) | multifocal pneumonia exists; CAMs must cope |
| lesion radius (``LESION_RADIUS``) | 0.13-0.25 canonical units | clipped to the lung: 1.7 / 3.9 / 7.5 % of the image (10th / 50th / 90th percentile) |
| lesion aspect ratio | 0.65-1.5, any orientation | lobar shapes are elongated |
| lesion peak opacity (``LESION_OPACITY``) | 0.18-0.32 density units | half to nearly all of the lung-to-tissue contrast: a real consolidation is near water |
| lesion edge softness | 15-30 % of the radius | soft, ill-defined margins (not a disc) |
| lesion texture | +/-25-45 % multiplicative | patchy alveolar filling, not a flat plateau |
| exposure offset / contrast | -0.10..0.12 / x0.7..1.2 | swamps the lesions' global brightness |
| gamma | 0.7-1.45 | reshapes the whole histogram per image |
| noise sigma / blur sigma | 0.008-0.03 / 0.4-1.2 px | blur in px at 256 px, scales with size |
| pose | +/-6 deg, x0.85-1.08, +/-0.06 | the lungs move, as between patients |

The lesion mask is the set of lung pixels where a lesion's (untextured) envelope exceeds one half;
components under 0.1 % of the image are dropped, and each remaining 8-connected component gets one box.

Global intensity statistics cannot separate the classes: a consolidation adds about
0.25 x 0.04 x 0.6 ~ 0.006 to the image's mean density while the exposure offset alone moves it by up to
0.22, and the normal variation of step 4 moves lung pixels into the same histogram bins that lesions do.
``tests/test_phantoms.py`` pins this: a class-balanced logistic regression on each image's mean, std
and 16-bin histogram scores at most 0.65 on a balanced test split. Locally, though, a lesion is an
obvious textured opacity in a dark lung, which a small CNN learns to find.

Split defaults: train 1,600 images (26 % NORMAL, like Kaggle's train), val 400 (same ratio, large enough
to select a model on, unlike Kaggle's 16), test 600 *balanced* (50 % NORMAL): a balanced test set makes
"accuracy <= 0.65" mean something (on a 26/74 test set a constant guess already scores 0.74) and is
closer to Kaggle's own test set (37.5 % NORMAL) than to its train set.

Determinism: image ``i`` of split ``s`` draws all its randomness from one ``np.random.Generator`` seeded
by ``SeedSequence([seed, split_code, i])``: generation order does not matter and the same parameters give
byte-identical PNGs (PIL writes no timestamps).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pneumonia_cam import SPLITS

# Bump whenever the pictures change: it is part of the cache key, so old caches are not reused.
PHANTOM_VERSION = 1
_SPLIT_CODE = {split: code for code, split in enumerate(SPLITS)}  # train 0, val 1, test 2: part of the seed
# The difficulty knobs of the module table that tests and docs quote (canonical units).
LESION_RADIUS = (0.13, 0.25)
LESION_OPACITY = (0.18, 0.32)


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of a generated data set; all of them enter the cache key."""

    size: int = 256  # px, square; > 224 so the article's Resize(224) does real work, as on Kaggle
    n_train: int = 1600  # with normal_fraction: 416 NORMAL / 1184 PNEUMONIA (Kaggle: 1341 / 3875)
    n_val: int = 400  # same ratio as train; Kaggle's 16-image val cannot select a model
    n_test: int = 600  # balanced, see test_normal_fraction
    normal_fraction: float = 0.26  # train and val share of NORMAL, like Kaggle's train split
    test_normal_fraction: float = 0.5  # balanced test split: a constant guess scores 0.5
    seed: int = 0

    def counts(self, split: str) -> tuple[int, int]:
        """(n_normal, n_pneumonia) of a split."""
        n = {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]
        frac = self.test_normal_fraction if split == "test" else self.normal_fraction
        n_normal = int(round(n * frac))
        return n_normal, n - n_normal


@dataclass
class Phantom:
    """One rendered radiograph and its ground truth."""

    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) bool, lesion pixels; all False for NORMAL
    lung_mask: np.ndarray  # (H, W) bool
    boxes: list[tuple[int, int, int, int]]  # (x, y, w, h), one per connected component of mask


# ----------------------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: (H, W) x and y coordinates, computed once per size."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(t, t)  # each (H, W)
    x.flags.writeable = y.flags.writeable = False  # cached and shared: an in-place op would corrupt it
    return x, y


def _sig(m: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``m > 0``: 0.5 on the boundary, ~0/1 beyond ``width`` (canonical units)."""
    return 0.5 + 0.5 * np.tanh(m * (1.0 / width))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with features ``size / cells`` px wide: (cells+1)^2 -> (size, size).

    Upsampling a coarse random grid is much cheaper than blurring a full-size one.
    """
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC))


@functools.lru_cache(maxsize=64)
def _marker_glyph(letter: str, px: int) -> np.ndarray:
    """A burned-in side marker: a letter in a square frame, (px, px) bool. PIL's bundled default
    font needs no font file, so this works offline."""
    img = Image.new("L", (px, px), 0)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, px - 1, px - 1], outline=255, width=max(1, px // 12))
    font = ImageFont.load_default(size=max(6, int(px * 0.8)))  # FreeType font; a bitmap one without it
    try:
        draw.text((px / 2, px / 2), letter, fill=255, font=font, anchor="mm")
    except ValueError:  # bitmap fonts cannot anchor: place the letter by hand
        draw.text((px // 4, px // 6), letter, fill=255, font=font)
    glyph = np.asarray(img) > 127
    glyph.flags.writeable = False
    return glyph


def _anatomy(rng: np.random.Generator, size: int):
    """Density map of a normal chest, (H, W) float32, and the lung field as soft membership (H, W)
    and signed margin (H, W) (~distance to the lung edge in canonical units, > 0 inside)."""
    u = rng.uniform  # every draw below is one nuisance or anatomy parameter
    x0, y0 = _grid(size)
    # Pose jitter: canonical coordinates = R(-theta) (pixel - shift) / scale. float(): NumPy 2 would
    # otherwise promote the float32 grids to float64 through the float64 scalars.
    th = np.deg2rad(u(-6, 6))
    c, s, sc = float(np.cos(th)), float(np.sin(th)), u(0.85, 1.08)
    xs, ys = (x0 - u(-0.06, 0.06)) / sc, (y0 - u(-0.06, 0.06)) / sc
    x = c * xs + s * ys  # (H, W)
    y = -s * xs + c * ys
    ax = np.abs(x)

    # 1. Body: widest at the shoulders, chest wall slightly convex, narrowing to the neck above
    # v = -0.6 (smoothstep), soft tissue thicker in the middle.
    bw = u(0.82, 0.95)
    t_neck = np.clip((-0.6 - y) / 0.3, 0, 1)
    half_w = bw * (1 - 0.06 * (y - 0.1) ** 2) - (bw - u(0.2, 0.28)) * t_neck * t_neck * (3 - 2 * t_neck)
    body = _sig(half_w - ax, 0.03)
    d = body * (u(0.38, 0.52) + 0.18 * (1 - (ax / half_w) ** 2))

    # 2. Lungs: each an ellipse tapered at the apex, above its diaphragm dome, lateral to the
    # mediastinum, outside the heart. Margins are ~distances; min() intersects, max() unites.
    hx, hy, hrx, hry = u(0.08, 0.16), u(0.22, 0.32), u(0.32, 0.42), u(0.20, 0.28)
    heart_m = (1 - np.sqrt(((x - hx) / hrx) ** 2 + ((y - hy) / hry) ** 2)) * hry  # > 0 inside
    med_w = u(0.09, 0.13)
    lung_m = None
    # Depth of inspiration moves both domes together: shallow breaths give small, denser lungs.
    insp = u(-0.08, 0.08)
    for side, dome_y in ((-1, insp + u(0.36, 0.44)), (1, insp + u(0.42, 0.50))):  # right dome higher
        cx, rx, ry, cy = side * u(0.39, 0.47), u(0.29, 0.39), u(0.58, 0.72), u(-0.1, -0.03)
        taper = 1 - u(0.25, 0.4) * np.clip((cy - y) * (1 / ry), 0, 1)  # narrow apex
        q = np.sqrt(((x - cx) / (rx * taper)) ** 2 + ((y - cy) / ry) ** 2)
        dome = dome_y - u(0.10, 0.18) * (1 - ((x - cx) / (rx * 1.1)) ** 2)
        m = np.minimum(np.minimum((1 - q) * rx, dome - y), side * x - med_w)
        lung_m = m if lung_m is None else np.maximum(lung_m, m)
    lung_m = np.minimum(lung_m, -heart_m)
    lung = _sig(lung_m, 0.012)
    air = u(0.30, 0.40) + 0.5 * insp  # lung air depth, less on a shallow breath
    d = d - air * lung + 0.06 * _sig(heart_m, 0.02)  # heart thicker than plain soft tissue
    # Lower zones denser than upper ones (overlying soft tissue, dependent lung), random strength.
    d += u(0.0, 0.14) * lung * np.clip((y + 0.2) * (1 / 0.6), 0, 1)

    # Vascular markings: faint texture, stronger towards the hila (both classes).
    d += 0.03 * lung * _smooth_noise(rng, size, 20) * np.clip(1.1 - ax, 0.3, 1)
    # Breast / soft-tissue overlays on the lower lungs and scapulae over the upper lateral lungs, at
    # random strength on both classes: normal mid-density in the lungs, so that "some extra density
    # in the lungs" (what a lesion adds to the histogram) is not a global-statistics shortcut.
    for side in (-1, 1):
        bq = ((x - side * u(0.35, 0.5)) / 0.38) ** 2 + ((y - u(0.3, 0.45)) / 0.24) ** 2
        d += u(0.0, 0.10) * _sig(1 - bq, 0.3)
        sq = ((x - side * u(0.6, 0.7)) / 0.16) ** 2 + ((y - u(-0.45, -0.3)) / 0.3) ** 2
        d += u(0.0, 0.08) * _sig(1 - sq, 0.15)

    # 3. Bones. Posterior ribs: periodic bands along v - g(|u|), g rising then falling laterally,
    # fainter where they overlie soft tissue than over the air-filled lungs.
    spacing = u(0.12, 0.15)
    g = u(-0.45, -0.3) * ax + u(0.75, 1.0) * ax * ax
    phase = (y - g) * (2 * np.pi / spacing) + u(0, 2 * np.pi)
    ribs = np.clip((np.cos(phase) - 0.3) * (1 / 0.7), 0, 1)  # bands ~0.4 of the period
    cage = _sig(bw * 0.95 - ax, 0.03) * _sig(ax - 0.07, 0.02) * _sig(y + 0.8, 0.04) * _sig(0.5 - y, 0.06)
    d += u(0.08, 0.12) * ribs * cage * (0.35 + 0.65 * lung)
    # Clavicles: thick segments from the sternal notch out and up to the shoulders.
    clav_y = u(-0.7, -0.6)
    for side in (-1, 1):
        ax_, ay_ = side * 0.07, clav_y
        vx, vy = side * u(0.5, 0.62) - ax_, -u(0.06, 0.14)
        t = np.clip(((x - ax_) * vx + (y - ay_) * vy) * (1 / (vx * vx + vy * vy)), 0, 1)
        dist = np.sqrt((x - ax_ - t * vx) ** 2 + (y - ay_ - t * vy) ** 2)
        d += 0.14 * _sig(0.028 - dist, 0.008)
    # Spine: a vertical band of vertebral bodies (dark disc spaces), dimmed behind the heart.
    discs = 0.75 + 0.25 * np.clip(np.cos(y * (2 * np.pi / u(0.10, 0.12))) * 3, -1, 1)
    d += 0.09 * _sig(0.065 - ax, 0.01) * discs * body
    return d, lung, lung_m


def _lesions(rng: np.random.Generator, size: int, lung: np.ndarray, lung_m: np.ndarray):
    """1-3 consolidations: density to add (H, W) and the union of their envelopes (H, W) in [0, 1]."""
    x, y = _grid(size)
    add = np.zeros_like(x)
    env = np.zeros_like(x)
    for _ in range(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])):
        r, aspect = rng.uniform(*LESION_RADIUS), rng.uniform(0.65, 1.5)
        rx, ry = r * aspect**0.5, r / aspect**0.5  # Python floats keep the maps float32
        # Centre well inside a lung (lung_m ~ distance to its edge), so most of the lesion lies in it.
        deep = np.flatnonzero(lung_m > 0.6 * min(rx, ry))
        if deep.size == 0:
            deep = np.flatnonzero(lung_m > 0)
        k = deep[rng.integers(deep.size)]
        cx, cy = float(x.flat[k]), float(y.flat[k])
        phi = rng.uniform(0, np.pi)
        c, s = float(np.cos(phi)), float(np.sin(phi))
        du, dv = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        q = np.sqrt((du / rx) ** 2 + (dv / ry) ** 2)
        q += 0.18 * _smooth_noise(rng, size, 6)  # lobulated, irregular outline
        envelope = _sig(1 - q, rng.uniform(0.15, 0.30))  # soft edge: 15-30 % of the radius
        texture = 1 + rng.uniform(0.25, 0.45) * np.clip(_smooth_noise(rng, size, 24), -2, 2) / 2
        add += rng.uniform(*LESION_OPACITY) * envelope * texture * lung  # confined to the lungs
        env = np.maximum(env, envelope)
    return add, env


def mask_components(mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The 8-connected components of a bool mask, and one bounding box per component.

    Args:
        mask: ``(H, W)`` bool mask.
        min_area: components smaller than this many pixels are dropped (1 keeps all).

    Returns:
        mask (np.ndarray): the ``(H, W)`` mask without the dropped components.
        boxes (list[tuple[int, int, int, int]]): the kept components' boxes ``(x, y, width, height)``
            (RSNA's order), sorted top-to-bottom, then left-to-right.
    """
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=bool))
    boxes = []
    keep = np.zeros(n + 1, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if areas[i] >= min_area:
            keep[i] = True
            boxes.append((sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start))
    return keep[labels], sorted(boxes, key=lambda b: (b[1], b[0]))


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """(h, w) float32 -> (size, size), bicubic, pixel centres aligned like our grid."""
    if a.shape[0] == size:
        return a
    # PIL's "F" mode reads raw float32 bytes: a float64 array would be silently garbled.
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), "F").resize((size, size), Image.BICUBIC))


def render_phantom(rng: np.random.Generator, size: int, pneumonia: bool) -> Phantom:
    """Draw one chest radiograph phantom.

    Args:
        rng: the image's own generator (all randomness comes from it).
        size: side length in px.
        pneumonia: add 1-3 consolidations if True.

    Returns:
        The image (H, W) uint8, its lesion mask, its lung mask, and the boxes of the lesion
            mask's 8-connected components.
    """
    # The anatomy is smooth (edges ~1.5 px wide before blur), so it is drawn at half resolution
    # (4x fewer pixels) and upsampled.
    lo = size // 2 if size >= 128 else size
    d, lung, lung_m = _anatomy(rng, lo)  # (lo, lo) each
    env = None
    if pneumonia:
        add, env = _lesions(rng, lo, lung, lung_m)
        d += add
    # Acquisition: detector blur (at low resolution: cheaper, same effect), then upsampling.
    d = ndimage.gaussian_filter(d, rng.uniform(0.4, 1.2) * size / 256 * lo / size, mode="nearest")
    d = _upsample(d, size)  # (lo, lo) -> (size, size)
    lung_mask = _upsample(lung, size) > 0.5
    mask = np.zeros((size, size), dtype=bool)
    boxes: list[tuple[int, int, int, int]] = []
    if env is not None:
        # The lesion region: its envelope's half-maximum, inside the lungs; specks < 0.1 % dropped.
        mask, boxes = mask_components((_upsample(env, size) > 0.5) & lung_mask, max(4, size * size // 1000))

    # Quantum noise, exposure (offset), contrast, gamma.
    d = d + rng.uniform(0.008, 0.03) * rng.standard_normal(d.shape, dtype=np.float32)
    img = np.clip(rng.uniform(-0.10, 0.12) + rng.uniform(0.7, 1.2) * d, 0, 1) ** rng.uniform(0.7, 1.45)

    # Side marker: random letter, size and place, never over the lungs; same on both classes.
    mpx = max(5, int(size * rng.uniform(0.05, 0.08)))
    glyph = _marker_glyph(str(rng.choice(["L", "R"])), mpx)
    for _ in range(20):
        r0, c0 = rng.integers(0, size - mpx, size=2)
        if not lung_mask[r0 : r0 + mpx, c0 : c0 + mpx].any():
            break
    img[r0 : r0 + mpx, c0 : c0 + mpx][glyph] = rng.uniform(0.85, 1.0)
    image = np.round(img * 255).astype(np.uint8)
    return Phantom(image=image, mask=mask, lung_mask=lung_mask, boxes=boxes)


# --------------------------------------------------------------------------------------- data set
def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of generation order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


def _save_png(array: np.ndarray, path: Path, compress_level: int = 1) -> None:
    # Lossless at every level: the level only trades file size for time.
    Image.fromarray(array, "L").save(path, format="PNG", compress_level=compress_level)


_CHUNK = 50  # images per job of the process pool


def _write_chunk(job: tuple) -> list[list]:
    """Render and save images ``start..stop-1`` of one split; return their box rows."""
    root, cfg, split, start, stop = job
    n_normal = cfg.counts(split)[0]
    rows: list[list] = []
    for i in range(start, stop):
        pneumonia = i >= n_normal
        name = f"phantom-{split}-{i:05d}"
        ph = render_phantom(image_rng(cfg.seed, split, i), cfg.size, pneumonia)
        label = "PNEUMONIA" if pneumonia else "NORMAL"
        # The X-rays stored uncompressed (66 kB instead of 36-40 kB): noisy pixels compress poorly, and
        # this halves the time to write and to decode them. The masks compress ~40x: level 1.
        _save_png(ph.image, root / split / label / f"{name}.png", compress_level=0)
        _save_png(ph.lung_mask.astype(np.uint8) * 255, root / "lungs" / split / f"{name}.png")
        if pneumonia:
            _save_png(ph.mask.astype(np.uint8) * 255, root / "masks" / split / "PNEUMONIA" / f"{name}.png")
            rows += [[name, x, y, w, h, 1] for x, y, w, h in ph.boxes]
        else:
            rows.append([name, "", "", "", "", 0])
    return rows


class _Serial:
    """Stands in for a process pool where forking is unavailable (or one core)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    map = staticmethod(map)


def _pool():
    """A pool of one process per core (at most 2), forked so that nothing is re-imported."""
    workers = min(2, os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return _Serial()
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def generate(root: str | os.PathLike, cfg: PhantomConfig = PhantomConfig(), progress: bool = True) -> Path:
    """Write a phantom data set in Kaggle layout under ``root`` (see the module docstring).

    Args:
        root: output folder; must be new or empty.
        cfg: data set parameters.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a Path.

    Raises:
        FileExistsError: ``root`` holds files already.
    """
    from tqdm import tqdm  # only the generator needs it

    root = Path(root)
    if root.is_dir() and any(root.iterdir()):  # stale files from another config would mix in
        raise FileExistsError(f"{root}: folder is not empty; fix: choose a new output folder or delete it")
    total = cfg.n_train + cfg.n_val + cfg.n_test
    bar = tqdm(total=total, desc="phantoms", unit="img", disable=not progress)
    for split in SPLITS:
        for sub in ("NORMAL", "PNEUMONIA"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
        (root / "lungs" / split).mkdir(parents=True, exist_ok=True)
    (root / "boxes").mkdir(exist_ok=True)
    # Every image has its own generator (image_rng), so chunks can be drawn in any process and the
    # files are the same bytes as a serial run; the box rows are gathered back in index order.
    jobs = [(root, cfg, split, start, min(start + _CHUNK, sum(cfg.counts(split))))
            for split in SPLITS for start in range(0, sum(cfg.counts(split)), _CHUNK)]
    rows: dict[str, list] = {split: [] for split in SPLITS}
    with _pool() as pool:
        for (_, _, split, start, stop), chunk_rows in zip(jobs, pool.map(_write_chunk, jobs)):
            rows[split] += chunk_rows
            bar.update(stop - start)
    for split in SPLITS:
        with open(root / "boxes" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
            writer.writerows(rows[split])
    bar.close()
    manifest = {"version": PHANTOM_VERSION, "config": dataclasses.asdict(cfg)}
    (root / "phantoms.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return root


def cache_key(cfg: PhantomConfig) -> str:
    """``phantoms-v<VERSION>-<12 hex of sha256(params)>``: a new version or any parameter -> new folder."""
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()
    return f"phantoms-v{PHANTOM_VERSION}-{hashlib.sha256(blob).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pneumonia_cam`` or ``~/.cache/pneumonia_cam``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pneumonia_cam"


def ensure_phantoms(cfg: PhantomConfig = PhantomConfig(), cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> Path:
    """Return the data set for ``cfg``, generating it on first use.

    Generation goes to a temporary sibling folder that is renamed into place only when complete, so
    an interrupted run never leaves a half-written data set that a later run would trust.

    Args:
        cfg: data set parameters.
        cache_dir: parent folder of the cached data sets (default: ``default_cache_dir()``).
        progress: show a progress bar while generating.
    """
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = parent / cache_key(cfg)
    if (target / "phantoms.json").is_file():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    try:
        generate(tmp, cfg, progress=progress)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first (target exists and is not empty)
            if not (target / "phantoms.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_mask(root: str | os.PathLike, split: str, stem: str) -> np.ndarray:
    """Lesion mask (H, W) bool of image ``stem``; all False for images without a mask (NORMAL)."""
    path = Path(root) / "masks" / split / "PNEUMONIA" / f"{stem}.png"
    if path.is_file():
        return np.asarray(Image.open(path).convert("L")) > 127
    size = PhantomConfig().size
    manifest = Path(root) / "phantoms.json"
    if manifest.is_file():
        size = json.loads(manifest.read_text())["config"]["size"]
    return np.zeros((size, size), dtype=bool)


def load_lung_mask(root: str | os.PathLike, split: str, stem: str) -> np.ndarray:
    """Lung-field mask (H, W) bool of image ``stem`` (both classes; ``lungs/<split>/<stem>.png``)."""
    return np.asarray(Image.open(Path(root) / "lungs" / split / f"{stem}.png").convert("L")) > 127


# ------------------------------------------------------------------------------------ sample grid
def save_grid(path: str | os.PathLike, seed: int = 0, size: int = 256, n_per_class: int = 4) -> Path:
    """Figure for the docs: ``n_per_class`` NORMAL (top row) and PNEUMONIA (bottom row) phantoms with
    lesion contours (red) and lung-field contours (dashed cyan)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4 * n_per_class, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n_per_class, squeeze=False)
    for row, pneumonia in enumerate((False, True)):
        for col in range(n_per_class):
            ph = render_phantom(image_rng(seed, "test", 2 * col + row), size, pneumonia)
            ax = axes[row, col]
            ax.imshow(ph.image, cmap="gray", vmin=0, vmax=255)
            ax.contour(ph.lung_mask, levels=[0.5], colors="cyan", linewidths=0.6, linestyles="--")
            if pneumonia:
                ax.contour(ph.mask, levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(f"{'PNEUMONIA' if pneumonia else 'NORMAL'} #{col}", fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumonia_cam.support.phantoms [--out DIR] [--seed S] [--size ...] [--grid FILE.png]``."""
    p = argparse.ArgumentParser(prog="python -m pneumonia_cam.support.phantoms", description=__doc__.split("\n")[0])
    d = PhantomConfig()
    p.add_argument("--out", help="write here (default: the user cache, reused if present)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--normal-fraction", type=float, default=d.normal_fraction,
                   help="share of NORMAL images in train and val (Kaggle's train: 1341 / 5216 = 0.257)")
    p.add_argument("--test-normal-fraction", type=float, default=d.test_normal_fraction,
                   help="share of NORMAL images in test (Kaggle's test: 234 / 624 = 0.375)")
    p.add_argument("--grid", metavar="FILE.png", help="only write a sample grid figure")
    a = p.parse_args(argv)
    if a.grid:
        print(save_grid(a.grid, seed=a.seed, size=a.size))
        return 0
    cfg = PhantomConfig(size=a.size, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, seed=a.seed,
                        normal_fraction=a.normal_fraction, test_normal_fraction=a.test_normal_fraction)
    if min(cfg.size, cfg.n_train, cfg.n_val, cfg.n_test) < 0 or cfg.size < 32:
        print("error: --size must be >= 32 and the counts >= 0", file=sys.stderr)
        return 2
    if not (0 <= cfg.normal_fraction <= 1 and 0 <= cfg.test_normal_fraction <= 1):
        print("error: --normal-fraction and --test-normal-fraction must be in [0, 1]", file=sys.stderr)
        return 2
    try:
        print(generate(a.out, cfg) if a.out else ensure_phantoms(cfg))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
