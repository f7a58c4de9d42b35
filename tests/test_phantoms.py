"""Phantom data set: determinism, ground truth consistency, layout, cache, and the difficulty pin."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pneumonia_cam.support import phantoms
from pneumonia_cam.support.phantoms import (
    PhantomConfig,
    ensure_phantoms,
    generate,
    image_rng,
    load_mask,
    render_phantom,
)

TINY = PhantomConfig(size=64, n_train=12, n_val=4, n_test=8, seed=0)


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("ph") / "data", TINY, progress=False)


def test_same_seed_gives_byte_identical_tree_other_seed_differs(tiny_tree, tmp_path):
    again = generate(tmp_path / "again", TINY, progress=False)
    other = generate(tmp_path / "other", PhantomConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    assert tree_hash(again) == tree_hash(tiny_tree)
    assert tree_hash(other) != tree_hash(tiny_tree)
    # Not just the manifest: the pictures themselves change with the seed.
    a = tiny_tree / "test" / "NORMAL" / "phantom-test-00000.png"
    b = other / "test" / "NORMAL" / "phantom-test-00000.png"
    assert a.read_bytes() != b.read_bytes()


def test_images_do_not_depend_on_generation_order(tiny_tree):
    # Image i of a split is drawn from its own generator: rendering it alone gives the same pixels.
    ph = render_phantom(image_rng(TINY.seed, "train", 7), TINY.size, pneumonia=True)
    on_disk = np.asarray(Image.open(tiny_tree / "train" / "PNEUMONIA" / "phantom-train-00007.png"))
    np.testing.assert_array_equal(ph.image, on_disk)


def test_layout_and_class_counts(tiny_tree):
    for split, n in (("train", 12), ("val", 4), ("test", 8)):
        n_normal, n_pneu = TINY.counts(split)
        assert n_normal + n_pneu == n
        assert len(list((tiny_tree / split / "NORMAL").glob("*.png"))) == n_normal
        assert len(list((tiny_tree / split / "PNEUMONIA").glob("*.png"))) == n_pneu
        assert len(list((tiny_tree / "masks" / split / "PNEUMONIA").glob("*.png"))) == n_pneu
        assert len(list((tiny_tree / "lungs" / split).glob("*.png"))) == n
    img = Image.open(tiny_tree / "train" / "NORMAL" / "phantom-train-00000.png")
    assert (img.mode, img.size) == ("L", (64, 64))
    manifest = json.loads((tiny_tree / "phantoms.json").read_text())
    assert manifest["version"] == phantoms.PHANTOM_VERSION and manifest["config"]["n_train"] == 12


def test_default_split_sizes():
    cfg = PhantomConfig()
    assert cfg.size == 256
    assert cfg.counts("train") == (416, 1184)  # 26 % NORMAL, like Kaggle's train
    assert cfg.counts("val") == (104, 296)
    assert cfg.counts("test") == (300, 300)  # balanced: a constant guess scores 0.5


def reference_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of each 8-connected component of ``mask``, top to bottom then left to right,
    straight from SciPy: the reference the phantom boxes are checked against."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = [(s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start)
             for s in ndimage.find_objects(labels)]
    return sorted(boxes, key=lambda b: (b[1], b[0]))


@pytest.fixture(scope="module")
def rendered() -> list[tuple[bool, phantoms.Phantom]]:
    return [(i % 3 != 0, render_phantom(image_rng(5, "train", i), 128, i % 3 != 0)) for i in range(36)]


def test_lesions_lie_inside_the_lungs_and_only_on_pneumonia(rendered):
    for pneumonia, ph in rendered:
        assert ph.image.dtype == np.uint8 and ph.image.shape == (128, 128)
        assert ph.mask.dtype == bool and ph.lung_mask.dtype == bool
        assert not (ph.mask & ~ph.lung_mask).any()  # lesion mask is a subset of the lung mask
        assert 0.12 < ph.lung_mask.mean() < 0.55  # two lung fields, plausibly sized
        if pneumonia:
            assert ph.mask.any() and 1 <= len(ph.boxes) <= 6
        else:
            assert not ph.mask.any() and ph.boxes == []


def test_lesion_area_follows_the_documented_range(rendered):
    areas = np.array([ph.mask.mean() for p, ph in rendered if p])
    assert areas.min() > 0.003 and areas.max() < 0.2
    assert 0.02 <= np.median(areas) <= 0.10  # "typically 2-10 % of the image"


def test_boxes_are_the_bounding_boxes_of_the_mask_components(rendered):
    for _, ph in rendered:
        assert ph.boxes == reference_boxes(ph.mask)
        covered = np.zeros_like(ph.mask)
        for x, y, w, h in ph.boxes:
            covered[y : y + h, x : x + w] = True
            # tight: the box touches the mask on all four sides
            sub = ph.mask[y : y + h, x : x + w]
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        assert not (ph.mask & ~covered).any()


def test_box_csv_matches_mask_files_rsna_format(tiny_tree):
    with open(tiny_tree / "boxes" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["patientId", "x", "y", "width", "height", "Target"]
    stems = {p.stem for p in (tiny_tree / "train").rglob("*.png")}
    assert {r["patientId"] for r in rows} == stems  # every image has at least one row
    for stem in sorted(stems):
        mine = [r for r in rows if r["patientId"] == stem]
        mask = load_mask(tiny_tree, "train", stem)
        if (tiny_tree / "train" / "NORMAL" / f"{stem}.png").exists():
            assert mine == [{"patientId": stem, "x": "", "y": "", "width": "", "height": "", "Target": "0"}]
            assert mask.shape == (64, 64) and not mask.any()
        else:
            boxes = [(int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"])) for r in mine]
            assert all(r["Target"] == "1" for r in mine)
            assert boxes and boxes == reference_boxes(mask)  # not the code that wrote them


def test_load_mask_reads_the_written_mask(tiny_tree):
    ph = render_phantom(image_rng(TINY.seed, "val", 3), TINY.size, pneumonia=True)
    np.testing.assert_array_equal(load_mask(tiny_tree, "val", "phantom-val-00003"), ph.mask)
    np.testing.assert_array_equal(phantoms.load_lung_mask(tiny_tree, "val", "phantom-val-00003"), ph.lung_mask)


def test_ensure_phantoms_generates_once_atomically_then_reuses(tmp_path, monkeypatch):
    cfg = PhantomConfig(size=48, n_train=3, n_val=2, n_test=2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = ensure_phantoms(cfg, progress=False)
    assert root == tmp_path / "xdg" / "pneumonia_cam" / phantoms.cache_key(cfg)
    assert root.name.startswith(f"phantoms-v{phantoms.PHANTOM_VERSION}-")
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temp folder left behind

    def boom(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(phantoms, "generate", boom)
    assert ensure_phantoms(cfg) == root
    # Any parameter change is a different data set, in a different folder.
    assert phantoms.cache_key(PhantomConfig(**{**cfg.__dict__, "seed": 1})) != phantoms.cache_key(cfg)


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    def dies(root, cfg, progress=True):
        (Path(root) / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(phantoms, "generate", dies)
    with pytest.raises(KeyboardInterrupt):
        ensure_phantoms(PhantomConfig(size=48, n_train=2, n_val=1, n_test=1), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the global-statistics shortcut
def global_features(img: np.ndarray) -> np.ndarray:
    """Per-image mean, std and 16-bin histogram (bins of 16 gray levels): (H, W) uint8 -> (18,)."""
    a = img.astype(np.float64) / 255
    return np.r_[a.mean(), a.std(), np.bincount(img.ravel() >> 4, minlength=16) / img.size]


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 3000, lr: float = 0.5, l2: float = 1e-3):
    """Class-balanced logistic regression by gradient descent (numpy): returns a predict function.

    Balanced weights make it look for a signal instead of leaning on the 26/74 train prior."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    sw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-a @ w))
        w -= lr * (a.T @ (sw * (p - y)) / len(a) + l2 * w)
    return lambda z: (np.c_[(z - mu) / sd, np.ones(len(z))] @ w > 0).astype(float)


def split_features(cfg: PhantomConfig, split: str, n: int, brighten: float = 0.0):
    """Features of the first ``n`` images of ``split`` at the same class ratio as ``cfg`` (same seeding
    as ``generate``); ``brighten`` adds a constant to PNEUMONIA images (the positive control)."""
    n_normal = round(n * cfg.counts(split)[0] / sum(cfg.counts(split)))
    x, y = [], []
    for i in range(n):
        pneumonia = i >= n_normal
        img = render_phantom(image_rng(cfg.seed, split, i), cfg.size, pneumonia).image.astype(np.int16)
        x.append(global_features(np.clip(img + brighten * pneumonia, 0, 255).astype(np.uint8)))
        y.append(float(pneumonia))
    return np.array(x), np.array(y)


def test_global_intensity_statistics_do_not_separate_the_classes():
    # Default class ratios (train 26 % NORMAL, test balanced) on 600 train / 400 test images at 128 px,
    # which behave like the default 256 px. Chance is 0.5; 0.65 is the bar for "no global shortcut".
    cfg = PhantomConfig(size=128)
    xtr, ytr = split_features(cfg, "train", 600)
    xte, yte = split_features(cfg, "test", 400)
    predict = fit_logistic(xtr, ytr)
    accuracy = (predict(xte) == yte).mean()
    assert 0.5 * len(yte) == yte.sum()  # balanced test split: chance is 0.5
    assert accuracy <= 0.65, f"global statistics separate the classes: accuracy {accuracy:.3f}"


def test_the_shortcut_classifier_would_catch_a_real_shortcut():
    # Positive control: the same features and classifier find a global brightness offset of 25 gray
    # levels (about the exposure jitter's half-range) on PNEUMONIA images, so the test above can fail.
    cfg = PhantomConfig(size=96)
    xtr, ytr = split_features(cfg, "train", 160, brighten=25)
    xte, yte = split_features(cfg, "test", 100, brighten=25)
    assert (fit_logistic(xtr, ytr)(xte) == yte).mean() > 0.8


# ------------------------------------------------------------------------------------------- CLI
def test_cli_writes_a_tree_and_a_grid(tmp_path, capsys):
    assert phantoms.main(["--out", str(tmp_path / "d"), "--size", "48", "--n-train", "4", "--n-val", "2",
                          "--n-test", "2", "--seed", "3"]) == 0
    assert len(list((tmp_path / "d").rglob("phantom-*.png"))) == 4 + 2 + 2 + 3 + 1 + 1 + 8  # images, masks, lungs
    assert phantoms.main(["--grid", str(tmp_path / "g.png"), "--size", "64"]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 400
    assert phantoms.main(["--out", str(tmp_path / "e"), "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err
    assert phantoms.main(["--out", str(tmp_path / "d"), "--size", "48"]) == 2  # never mixes into old files
    err = capsys.readouterr().err
    assert "not empty" in err and str(tmp_path / "d") in err and err.count("\n") == 1
    # The class ratios of the Kaggle splits: 3 of 8 test images NORMAL, 1 of 4 train images.
    assert phantoms.main(["--out", str(tmp_path / "k"), "--size", "48", "--n-train", "4", "--n-val", "1",
                          "--n-test", "8", "--normal-fraction", "0.25", "--test-normal-fraction", "0.375"]) == 0
    assert len(list((tmp_path / "k" / "test" / "NORMAL").iterdir())) == 3
    assert len(list((tmp_path / "k" / "train" / "NORMAL").iterdir())) == 1
    assert phantoms.main(["--out", str(tmp_path / "f"), "--test-normal-fraction", "1.5"]) == 2
    assert "--test-normal-fraction" in capsys.readouterr().err
