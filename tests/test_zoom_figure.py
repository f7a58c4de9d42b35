"""``docs/figures/make_zoom_figure.py``, the lesson 03 figure: it runs, and the numbers its caption and
title state about the two zooms hold for the map it draws."""

import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "make_zoom_figure.py"


def test_zoom_figure_is_drawn_and_only_the_half_pixel_zoom_keeps_the_mean(tmp_path):
    module = runpy.run_path(str(SCRIPT))  # imported, not run as __main__: nothing is written yet
    x, mask, cam = module["known_map"]()
    assert x.shape == (3, 224, 224) and mask.shape == (224, 224) and cam.shape == (7, 7)
    # The "known map" is the lesion's share of each 32x32 cell, so its mean is the lesion's share.
    assert mask.any() and cam.mean() == pytest.approx(mask.mean(), abs=1e-12)
    out = tmp_path / "cam_zoom.png"
    means = module["make_figure"](out)
    assert Image.open(out).size[0] > 500
    assert means["ours"] == pytest.approx(means["7x7"], abs=1e-12)  # half-pixel: the mean is kept
    assert abs(means["article"] - means["7x7"]) > 0.01 * means["7x7"]  # corner-aligned: it is not
    assert np.isfinite(list(means.values())).all()
