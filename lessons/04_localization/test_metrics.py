"""Lesson 04: the metrics that ask "does the map point at the lesion?"
(``pneumonia_cam.extensions.localization``), each on small hand-made maps with known answers."""

import numpy as np
import pytest

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.extensions import localization as loc

# The functions under test: the package's, or yours with `--student` (lessons/04_localization/exercises.py).
ex = exercise_impl("04_localization")


def lesion(size=8, rows=slice(2, 4), cols=slice(5, 7)) -> np.ndarray:
    """An 8x8 mask with a 2x2 lesion at rows 2-3, columns 5-6."""
    m = np.zeros((size, size), dtype=bool)
    m[rows, cols] = True
    return m


def peak(y, x, size=8) -> np.ndarray:
    s = np.zeros((size, size))
    s[y, x] = 1.0
    return s


@pytest.mark.exercise("hit_0px", "pointing_game")
def test_hit_at_0px_needs_the_maximum_on_the_lesion_itself(judged):
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    mask = lesion()
    assert e.hit_0px(peak(2, 5), mask) and e.hit_0px(peak(3, 6), mask)
    # one pixel beside the lesion: a miss at 0 px, a hit at any tolerance >= 1 px
    assert not e.hit_0px(peak(2, 4), mask)
    assert e.pointing_game(peak(2, 4), mask, tolerance=1)
    assert not e.pointing_game(peak(2, 4), mask, tolerance=0.5)
    assert e.hit_0px(peak(2, 4), mask) == e.pointing_game(peak(2, 4), mask, tolerance=0)
    # a flat map "points" at its first pixel: (0, 0), off the lesion
    assert not e.hit_0px(np.ones((8, 8)), mask)
    assert e.hit_0px(np.ones((8, 8)), lesion(rows=slice(0, 1), cols=slice(0, 1)))


@pytest.mark.exercise("pointing_game", "hit_0px")
def test_the_15px_tolerance_is_half_a_7x7_cell_at_224px(judged):
    """At 224 px a 7x7 cell is 32 px wide: a peak anywhere in the lesion's cell row is nearly a hit."""
    e = ex.judging(judged)  # one exercise at a time under --student; see the plugin
    mask = np.zeros((224, 224), dtype=bool)
    mask[100:110, 100:110] = True
    assert e.pointing_game(peak(105, 124, 224), mask)  # 15 px right of the lesion: a hit at 15 px
    assert not e.hit_0px(peak(105, 124, 224), mask)


@pytest.mark.exercise("pointing_game")
def test_the_distance_is_euclidean_to_the_nearest_lesion_pixel():
    """A one-pixel lesion at (5, 5): a peak 9 rows and 12 columns away is 15 px off, a hit at 15 px
    (21 steps in city-block distance); one 11 rows and 11 columns away is 15.6 px off, a miss (11
    steps in chessboard distance). The distance is to the nearest lesion pixel, not to the centre."""
    dot = np.zeros((40, 40), dtype=bool)
    dot[5, 5] = True
    assert ex.pointing_game(peak(14, 17, 40), dot) and not ex.pointing_game(peak(16, 16, 40), dot)
    bar = np.zeros((40, 40), dtype=bool)
    bar[5, 5:35] = True  # 30 px long, centre (5, 19.5)
    assert ex.pointing_game(peak(20, 34, 40), bar)  # 15 px below its right end, 20.9 px from its centre
    # a flat map points at its first pixel, (0, 0): sqrt(50) = 7.07 px from the dot
    assert ex.pointing_game(np.ones((40, 40)), dot, tolerance=7.1)
    assert not ex.pointing_game(np.ones((40, 40)), dot, tolerance=7)


@pytest.mark.exercise("energy_pointing_game")
def test_energy_of_hand_made_maps():
    mask = lesion()  # 4 of 64 pixels
    assert ex.energy_pointing_game(np.ones((8, 8)), mask) == pytest.approx(4 / 64)  # knows nothing: the area
    s = np.zeros((8, 8))
    s[2:4, 5:7] = 1.0  # 4 units on the lesion
    s[7, 0:4] = 0.5  # 2 units off it
    assert ex.energy_pointing_game(s, mask) == pytest.approx(4 / 6)
    # only the positive mass counts: a raw map's negative cells take nothing away from the total
    s[0, 0:2] = -1.0
    assert ex.energy_pointing_game(s, mask) == pytest.approx(4 / 6)
    # a map with no positive mass puts none of it on the lesion
    assert ex.energy_pointing_game(np.zeros((8, 8)), mask) == 0.0
    assert ex.energy_pointing_game(-np.ones((8, 8)), mask) == 0.0


def test_iou_of_the_thresholded_map_by_hand():
    """S: 0.9 on the lesion's top row (2 px), 0.5 on its bottom row (2 px), 0.3 on 4 px beside it.
    t = 0.4: {S >= t} is the lesion (4 px) -> IoU 1; t = 0.2: 8 px, 4 of them lesion -> 4/8;
    t = 0.6: the top row -> 2/4; t = 0.95: empty -> 0."""
    mask = lesion()
    s = np.zeros((8, 8))
    s[2, 5:7], s[3, 5:7] = 0.9, 0.5
    s[6:8, 0:2] = 0.3
    ious = loc.threshold_ious(s, mask, [0.2, 0.4, 0.6, 0.95])
    np.testing.assert_allclose(ious, [4 / 8, 1.0, 2 / 4, 0.0])
    assert loc.threshold_ious(s, mask).shape == (len(loc.THRESHOLDS),)
    assert loc.THRESHOLDS[0] == 0.05 and loc.THRESHOLDS[-1] == 0.95


def test_the_threshold_is_chosen_on_validation_only():
    """Three levels; validation favours the middle one, test would favour the last: the test mIoU is
    read at the validation's choice, whatever test prefers (Choe et al. 2020)."""
    levels = [0.2, 0.5, 0.8]
    val = np.array([[0.1, 0.6, 0.3], [0.2, 0.4, 0.5]])  # means 0.15, 0.50, 0.40
    assert loc.choose_threshold(val, levels) == (0.5, 1)
    test = np.array([[0.1, 0.2, 0.9], [0.3, 0.4, 0.7]])
    t, i = loc.choose_threshold(val, levels)
    assert test[:, i].mean() == pytest.approx(0.3)  # not 0.8, the best level in hindsight
    assert loc.choose_threshold(np.array([[0.5, 0.5, 0.1]]), levels) == (0.2, 0)  # ties: the lowest level
    with pytest.raises(ValueError, match="val_ious"):
        loc.choose_threshold(np.zeros((2, 4)), levels)


def test_bootstrap_interval_over_images():
    # a constant has no spread
    assert loc.bootstrap_ci(np.full(20, 0.7)) == pytest.approx((0.7, 0.7))
    # a ratio of means: energy twice the area on every image -> exactly 2
    area = np.linspace(0.01, 0.1, 30)
    assert loc.bootstrap_ci(2 * area, area) == pytest.approx((2.0, 2.0))
    # 400 coin flips, half hits: the 95 % interval is about 0.5 +- 1.96 * sqrt(0.25 / 400) = +- 0.049
    hits = np.arange(400) % 2
    lo, hi = loc.bootstrap_ci(hits, n_resamples=2000)
    assert lo == pytest.approx(0.451, abs=0.012) and hi == pytest.approx(0.549, abs=0.012)
    # seeded, and pooled over seeds: two identical seeds give the one-seed interval
    assert loc.bootstrap_ci(hits, seed=3) == loc.bootstrap_ci(hits, seed=3)
    assert loc.bootstrap_ci(np.stack([hits, hits]), seed=3) == pytest.approx(loc.bootstrap_ci(hits, seed=3))
    # two seeds that disagree: the interval is around the mean of their means
    a = np.stack([np.ones(50), np.zeros(50)])  # seed 0 always hits, seed 1 never
    assert loc.bootstrap_ci(a) == pytest.approx((0.5, 0.5))
