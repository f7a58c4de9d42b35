"""Lesson 04: the baselines that give a localization score its meaning
(``pneumonia_cam.extensions.localization``): maps that know nothing, the centre, the lungs, the side."""

import numpy as np
import pytest

from pneumonia_cam.exercises import exercise_impl
from pneumonia_cam.extensions import localization as loc

# The function under test: the package's, or yours with `--student` (lessons/04_localization/exercises.py).
# The scores of the maps are read with the package's metrics, so that only the baseline is judged.
ex = exercise_impl("04_localization")


def two_lungs() -> np.ndarray:
    """A 20x20 image with two 'lungs': rows 2-17, columns 2-7 (96 px) and 12-17 (96 px)."""
    m = np.zeros((20, 20), dtype=bool)
    m[2:18, 2:8] = True
    m[2:18, 12:18] = True
    return m


def test_lung_prior_is_uniform_over_both_lungs():
    lungs = two_lungs()
    lesion = np.zeros_like(lungs)
    lesion[5:9, 13:16] = True  # 12 px in the right-hand lung
    prior = loc.lung_prior_map(lungs)
    np.testing.assert_array_equal(prior, lungs.astype(float))
    # its energy in the lesion is |G ∩ L| / |L| = 12 / 192; the area share is 12 / 400
    assert loc.energy_pointing_game(prior, lesion) == pytest.approx(12 / 192)
    assert loc.energy_pointing_game(prior, lesion) / lesion.mean() == pytest.approx(400 / 192)
    with pytest.raises(ValueError, match="lung mask is empty"):
        loc.lung_prior_map(np.zeros((4, 4), bool))


@pytest.mark.exercise("correct_lung_map")
def test_correct_lung_knows_the_side_and_nothing_else():
    lungs = two_lungs()
    right = np.zeros_like(lungs)
    right[5:9, 13:16] = True
    m = ex.correct_lung_map(lungs, right)
    assert m.dtype == np.float64 and set(np.unique(m)) == {0.0, 1.0}
    assert m[:, 12:18].sum() == 96 and m[:, :10].sum() == 0  # only the right lung
    # energy doubles against both lungs: 12 / 96 instead of 12 / 192
    assert loc.energy_pointing_game(m, right) == pytest.approx(12 / 96)
    # a lesion over both lungs goes with the larger overlap: 6 px left, 3 px right -> left
    both = np.zeros_like(lungs)
    both[10:13, 6:8] = True  # 6 px in the left lung
    both[10:13, 8:13] = True  # the gap and 3 px of the right lung
    m = ex.correct_lung_map(lungs, both)
    assert m[:, 2:8].sum() == 96 and m[:, 12:18].sum() == 0
    # ... and 3 px left, 6 px right -> right: the larger overlap, not the first lung touched
    most_right = np.zeros_like(lungs)
    most_right[10:13, 7] = True  # 3 px in the left lung
    most_right[10:13, 12:14] = True  # 6 px in the right lung
    m = ex.correct_lung_map(lungs, most_right)
    assert m[:, 12:18].sum() == 96 and m[:, 2:8].sum() == 0
    # a lesion outside both lungs gets both lungs
    outside = np.zeros_like(lungs)
    outside[0, 0] = True
    np.testing.assert_array_equal(ex.correct_lung_map(lungs, outside), lungs.astype(float))
    # a lung field that narrows to a corner is still one field (8-connectivity)
    corner = np.zeros((6, 6), dtype=bool)
    corner[0:3, 0:3] = True
    corner[3:6, 3:6] = True  # touches the first block only at (2, 2)-(3, 3)
    spot = np.zeros_like(corner)
    spot[0, 0] = True
    np.testing.assert_array_equal(ex.correct_lung_map(corner, spot), corner.astype(float))
    with pytest.raises(ValueError):
        ex.correct_lung_map(np.zeros((4, 4), dtype=bool), np.ones((4, 4), dtype=bool))  # no lungs
    with pytest.raises(ValueError):
        ex.correct_lung_map(lungs, right[:10])  # masks of different sizes


def test_a_flat_map_scores_the_lesions_area_and_the_centre_scores_the_centre():
    lesion = np.zeros((21, 21), dtype=bool)
    lesion[9:12, 9:12] = True  # in the middle
    assert loc.energy_pointing_game(np.ones((21, 21)), lesion) == pytest.approx(9 / 441)
    g = loc.gaussian_map((21, 21))
    assert loc.hit_0px(g, lesion)  # the centred Gaussian points at the centre
    off = np.zeros_like(lesion)
    off[0:3, 0:3] = True
    assert not loc.pointing_game(g, off, tolerance=5)  # and nowhere else
    # its energy in the central lesion is the Gaussian's mass there: computed from the definition
    assert loc.energy_pointing_game(g, lesion) == pytest.approx(g[9:12, 9:12].sum() / g.sum())
