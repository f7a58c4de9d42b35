"""Lesson 2, step 1 — "Load and preprocess our data": what the article's pipelines really do.

Each test pins one fact a reader should take away from the data step. Images are tiny (32-64 px)
and the data set is a 20-image phantom tree, so the file runs in about a second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.steps.data import make_datasets
from pneumonia_cam.support.images import load_image
from pneumonia_cam.support.phantoms import PhantomConfig, generate

SIZE = 32
# The function under test: the package's, or yours with `--student` (lessons/02_transfer_learning/exercises.py).
ex = exercise_impl("02_transfer_learning")
# The article's Normalize, written out: the reference the pipelines are checked against.
ARTICLE_MEAN, ARTICLE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.exercise("make_transforms")
def test_the_three_pipelines_are_the_articles():
    tf = ex.make_transforms(224)
    assert set(tf) == {"train", "val", "test"}
    train = tf["train"].transforms
    assert [type(t) for t in train] == [transforms.Resize, transforms.RandomRotation,
                                        transforms.RandomHorizontalFlip, transforms.ToTensor, transforms.Normalize]
    assert train[0].size == (224, 224)  # a pair: squash to a square, aspect ratio not kept
    assert train[1].degrees == [-20.0, 20.0] and train[2].p == 0.5
    for split in ("val", "test"):
        ev = tf[split].transforms
        assert [type(t) for t in ev] == [transforms.Resize, transforms.CenterCrop, transforms.ToTensor,
                                         transforms.Normalize]
        assert ev[0].size == 224 and ev[1].size == (224, 224)  # an int: shorter side to 224
    for split in ("train", "val", "test"):
        norm = tf[split].transforms[-1]
        assert tuple(norm.mean) == ARTICLE_MEAN and tuple(norm.std) == ARTICLE_STD, split


@pytest.mark.parametrize("w, h", [(64, 64), (80, 48), (40, 100)])
@pytest.mark.exercise("make_transforms")
def test_every_pipeline_outputs_3_by_size_by_size(w, h):
    img = Image.new("RGB", (w, h), (90, 90, 90))
    for split, tf in ex.make_transforms(SIZE).items():
        x = tf(img)
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32, split  # (3, H, W)


@pytest.mark.exercise("make_transforms")
def test_normalize_maps_a_constant_image_to_its_per_channel_z_score():
    # ToTensor divides by 255; Normalize subtracts the ImageNet mean and divides by the std, per channel:
    # 128 / 255 = 0.50196 -> (0.50196 - 0.485) / 0.229 = 0.0741, then 0.2052, 0.4265.
    v = 128
    x = ex.make_transforms(SIZE)["test"](Image.new("RGB", (48, 48), (v, v, v)))  # (3, H, W)
    expected = torch.tensor([0.0741, 0.2052, 0.4265])  # (3,), by hand as above
    torch.testing.assert_close(x.mean((1, 2)), expected, rtol=0, atol=1e-4)
    expected = (v / 255 - torch.tensor(ARTICLE_MEAN)) / torch.tensor(ARTICLE_STD)  # the same, unrounded
    torch.testing.assert_close(x.mean((1, 2)), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.std((1, 2)), torch.zeros(3), rtol=0, atol=1e-6)


def test_center_crop_after_resize_is_a_no_op_on_square_images_only():
    """Library behaviour (torchvision), the reason the article's two pipelines frame images differently."""
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    resize = transforms.Resize(SIZE)
    # Square input (our 256 px phantoms): Resize(s) already gives s x s, so CenterCrop(s) changes nothing.
    assert np.array_equal(np.asarray(transforms.CenterCrop(SIZE)(resize(square))), np.asarray(resize(square)))
    # Non-square input (every Kaggle scan): Resize(s) keeps the aspect ratio, 80x48 -> 53x32 (w x h),
    # and CenterCrop(s) then cuts 21 columns: the article's eval pipeline drops the image's sides,
    # while its train pipeline (Resize((s, s))) squashes them in. Same pixels, two framings.
    wide = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))  # (H, W, 3)
    assert resize(wide).size == (53, 32)
    assert transforms.CenterCrop(SIZE)(resize(wide)).size == (SIZE, SIZE)
    squash = transforms.Resize((SIZE, SIZE))(wide)
    assert not np.array_equal(np.asarray(squash), np.asarray(transforms.CenterCrop(SIZE)(resize(wide))))


@pytest.mark.exercise("make_transforms")
def test_grayscale_becomes_three_identical_channels(tmp_path):
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8), "L")
    gray.save(tmp_path / "x.png")
    rgb = np.asarray(load_image(tmp_path / "x.png"))  # (H, W, 3)
    assert rgb.shape == (40, 40, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], np.asarray(gray))
    # After Normalize the channels differ only by the per-channel mean/std: undo it and they agree.
    x = ex.make_transforms(SIZE)["test"](load_image(tmp_path / "x.png"))  # (3, H, W)
    raw = x * torch.tensor(ARTICLE_STD)[:, None, None] + torch.tensor(ARTICLE_MEAN)[:, None, None]
    torch.testing.assert_close(raw[0], raw[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(raw[1], raw[2], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    cfg = PhantomConfig(size=48, n_train=8, n_val=4, n_test=8, seed=0)
    return generate(tmp_path_factory.mktemp("phantoms"), cfg, progress=False)


def test_imagefolder_numbers_normal_0_and_pneumonia_1(phantom_root):
    ds = make_datasets(phantom_root, size=SIZE)
    for split in ("train", "val", "test"):
        assert ds[split].class_to_idx == {"NORMAL": 0, "PNEUMONIA": 1}
    test = ds["test"]
    for path, label in test.samples:
        assert ("/PNEUMONIA/" in path) == (label == 1)
    x, y = test[len(test) - 1]
    assert x.shape == (3, SIZE, SIZE) and y == 1
