"""``docs/figures/ceiling_table.py``, lesson 04's ceiling table: it runs on a phantom set, its ideal map
is the block mean of the lesion mask, and at full resolution the ideal map scores what the mask scores."""

import runpy
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "ceiling_table.py"


@pytest.fixture(scope="module")
def script() -> dict:
    return runpy.run_path(str(SCRIPT))  # imported, not run as __main__


def test_ideal_map_is_the_lesions_share_of_each_cell(script):
    mask = np.zeros((4, 6), dtype=bool)  # a 2x2 grid of 2x3 blocks
    mask[0:2, 0:3] = True  # fills the top-left block: 6 / 6
    mask[3, 5] = True  # one pixel of the bottom-right block: 1 / 6
    mask[0, 3:5] = True  # two pixels of the top-right block: 2 / 6
    np.testing.assert_array_equal(script["ideal_map"](mask, 2), [[1, 2 / 6], [0, 1 / 6]])
    with pytest.raises(ValueError, match="does not divide"):
        script["ideal_map"](mask, 4)


def test_the_table_runs_on_tiny_phantoms_and_full_resolution_is_the_mask(script, tiny_kaggle_root, capsys):
    masks, lungs = script["lesion_masks"](str(tiny_kaggle_root), image_size=64)
    assert masks and len(masks) == len(lungs) and all(m.shape == (64, 64) and m.any() for m in masks)
    # At one cell per pixel the ideal map is the mask: every hit, box IoU 1, all the energy on the lesion.
    full = script["ceiling_maps"](masks, 64)
    np.testing.assert_array_equal(full, np.stack(masks).astype(float))
    top = script["score_maps"](full, masks)
    area = np.mean([m.mean() for m in masks])
    assert top == pytest.approx({"hit_0px": 1.0, "hit_15px": 1.0, "energy_over_area": 1 / area, "box_iou": 1.0})
    # A coarse grid cannot concentrate more energy than the mask itself, nor box it better.
    coarse = script["score_maps"](script["ceiling_maps"](masks, 8), masks)
    assert coarse["energy_over_area"] < top["energy_over_area"] and coarse["box_iou"] <= 1.0
    # The baselines go through the same scores; the lung prior's energy is |G and L| / |L| per image.
    base = script["baseline_maps"](masks, lungs, grid=4)
    prior = np.mean([(m & lung).sum() / lung.sum() for m, lung in zip(masks, lungs)])
    assert script["score_maps"](base["lung prior (both lungs)"], masks)["energy_over_area"] == pytest.approx(
        prior / area)

    # The command itself prints both tables.
    assert script["main"](["--data-dir", str(tiny_kaggle_root), "--image-size", "64", "--grids", "8", "64"]) == 0
    out = capsys.readouterr().out
    assert "| 8 x 8 |" in out and "| 64 x 64 | 1.000 | 1.000 |" in out
    assert "| correct lung |" in out and f"{len(masks)} PNEUMONIA test images, 64 px." in out
