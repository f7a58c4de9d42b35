"""Decoding a large chest X-ray JPEG: full decode vs reduced-scale (draft) decode.

Tutorial section: *Load and preprocess our data*. Kaggle scans reach ~2,900 px a side and are
shrunk to 224 px right after decoding. :func:`pneumonia_cam.support.images.draft_jpeg` lets libjpeg decode
at 1/8 scale directly (the largest power-of-two reduction that keeps both sides >= 224), so the
inverse DCT, the RGB conversion and the resize touch 64x fewer pixels; the entropy decoding of the
file is the same work either way.

The image: a 512 px phantom scaled to 2,880 x 2,304 (bicubic) with Gaussian film grain
($\\sigma$ = 4 gray levels), saved as a grayscale JPEG of quality 90: phantom-like anatomy, the
size of the largest Kaggle scans. One round is the whole per-image data step up to the network's
input: ``make_transforms(224)["val"](load_image(path, draft_size))``. ``extra_info`` also holds the
decode-only ratio and how far the 224 px normalized tensors are apart (``max_abs_diff``,
``mean_abs_diff``; the tolerances are pinned in ``tests/test_precision.py``).

CPU only (decoding runs on the host). Normal run: a 960 x 768 image, untimed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from pneumonia_cam.steps.data import make_transforms
from pneumonia_cam.support.images import load_image
from pneumonia_cam.support.phantoms import image_rng, render_phantom


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory, bench_enabled):
    w, h = (2880, 2304) if bench_enabled else (960, 768)
    ph = render_phantom(image_rng(0, "test", 1), 512, pneumonia=True)
    img = np.asarray(Image.fromarray(ph.image).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += np.random.default_rng(0).normal(0.0, 4.0, img.shape)  # film grain: JPEG has to encode it
    path = tmp_path_factory.mktemp("jpeg") / "big.jpeg"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(path, quality=90)
    return path, (w, h)


def test_jpeg_decode_full_vs_draft(benchmark, compare, big_jpeg):
    path, (w, h) = big_jpeg
    tf = make_transforms(224)["val"]
    info = compare(lambda: tf(load_image(path)), lambda: tf(load_image(path, draft_size=224)),
                   names=("full", "draft"), rounds=15 if benchmark.enabled else 1, warmup=1)
    full, draft = info["outputs"]["full"], info["outputs"]["draft"]
    assert full.shape == draft.shape == (3, 224, 224)
    diff = (full - draft).abs()

    # Decode only (no resize, no normalization), interleaved the same way.
    reps = 10 if benchmark.enabled else 1
    t_full = t_draft = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        load_image(path)
        t1 = time.perf_counter()
        small = load_image(path, draft_size=224)
        t_draft += time.perf_counter() - t1
        t_full += t1 - t0
    assert min(small.size) >= 224
    benchmark.extra_info.update({
        "image_px": [w, h], "draft_px": list(small.size), "decode_only_ratio": t_full / t_draft,
        "decode_full_s": t_full / reps, "decode_draft_s": t_draft / reps,
        "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
    })
    print(f"{w}x{h} -> draft {small.size[0]}x{small.size[1]}: decode only {t_full / t_draft:.1f}x faster; "
          f"224 px tensors: mean |diff| {diff.mean():.4f}, max {diff.max():.4f} (normalized units)")
