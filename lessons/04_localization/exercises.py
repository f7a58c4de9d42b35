"""Lesson 04, write it yourself: the pointing game, the hit at 0 px, the energy and the correct-lung baseline.

Fill in each function below, then let the lesson's own tests judge your code:

    python -m pneumonia_cam.exercises start 04_localization   # writes my_exercises/04_localization.py
    pytest lessons/04_localization --student my_exercises     # the lesson's tests, with your functions

Each failing test names the exercise and repeats its hint; when every exercise passes, pytest says
so in one line. Read lessons/04_localization/README.md first. The answers are in
pneumonia_cam/extensions/localization.py: try without it.

Notation: $S$ is an (H, W) map (in the lesson, the upsampled, normalized CAM, values in [0, 1]), $G$
the set of lesion pixels, a boolean (H, W) mask of the same size with at least one True pixel (only
lesion images are scored). A pixel $p = (y, x)$ is (row, column), NumPy's order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage  # noqa: F401  (distance_transform_edt, label: for your answers)

LESSON = "04_localization"  # tells `pytest --student` which lesson this file answers


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: float = 15.0) -> bool:
    """A hit when the map's maximum lies within ``tolerance`` pixels of the lesion (Zhang et al. 2016).

    $p^* = \\arg\\max_p S(p)$ (ties go to the first pixel in row order), and a hit is
    $\\min_{q \\in G} \\lVert p^* - q \\rVert \\le \\tau$: the Euclidean distance to the *nearest* lesion
    pixel, 0 on the lesion itself.

    Args:
        saliency: (H, W) map; only where its maximum lies matters.
        mask: (H, W) bool lesion mask.
        tolerance: $\\tau$ in pixels; 0 means the maximum must be on the lesion itself.

    Returns:
        A Python ``bool``.

    Hint: np.unravel_index(np.argmax(saliency), saliency.shape) is the peak as (row, column), first
    of any ties. ndimage.distance_transform_edt(a) gives each nonzero pixel of a its Euclidean
    distance to the nearest zero pixel: hand it the pixels outside the lesion, and read it at the peak.
    """
    raise NotImplementedError("exercise pointing_game: see lessons/04_localization/README.md, "
                              "'Step 1: does the maximum point at the lesion?'")


def hit_0px(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """CheXlocalize's hit (Saporta et al. 2022): the map's single maximum lies on the lesion itself.

    $p^* \\in G$ with $p^* = \\arg\\max_p S(p)$, ties to the first pixel in row order, so a flat map
    points at its top-left corner. The pointing game at $\\tau = 0$, without any distance.

    Args:
        saliency: (H, W) map.
        mask: (H, W) bool lesion mask.

    Returns:
        A Python ``bool``.

    Hint: Find the peak as in pointing_game and look it up in the mask (np.argmax counts in row
    order, like mask.flat). Comparing values instead, the map's maximum on the lesion against its
    overall maximum, lets a flat map hit everywhere.
    """
    raise NotImplementedError("exercise hit_0px: see lessons/04_localization/README.md, "
                              "'Step 1: does the maximum point at the lesion?'")


def energy_pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's positive mass inside the lesion (Wang et al., Score-CAM, 2020).

    $E = \\sum_{p \\in G} S^+(p) \\, / \\, \\sum_p S^+(p)$ with $S^+ = \\max(S, 0)$, in [0, 1]. A flat
    map scores the lesion's area share $|G| / (HW)$.

    Args:
        saliency: (H, W) map, possibly with negative cells (a raw CAM has them).
        mask: (H, W) bool lesion mask.

    Returns:
        A Python ``float``; 0.0 for a map with no positive mass.

    Hint: Clip the negative cells to 0 first (np.clip or np.maximum), then divide the sum over the
    lesion pixels (saliency[mask]) by the sum over all pixels. Sums, not means: a mean ratio is
    energy over area. A map with no positive mass has nothing to share: return 0.0, do not divide.
    """
    raise NotImplementedError("exercise energy_pointing_game: see lessons/04_localization/README.md, "
                              "'Step 2: how much of the map's mass lies on the lesion?'")


def correct_lung_map(lung_mask: np.ndarray, lesion_mask: np.ndarray) -> np.ndarray:
    """The correct-lung baseline: uniform over the lung field that holds the lesion, 0 elsewhere.

    The lung fields are the connected components of ``lung_mask`` with 8-connectivity (pixels that
    touch at a corner belong together). The one with the most lesion pixels is the lesion's lung
    (the first such component on a tie); a lesion that touches no lung pixel gets both lungs.

    Args:
        lung_mask: (H, W) bool lung-field mask (both lungs).
        lesion_mask: (H, W) bool lesion mask.

    Returns:
        (H, W) float64 map: 1.0 on that lung, 0.0 elsewhere.

    Raises:
        ValueError: if the lung mask is empty or the two masks differ in shape.

    Hint: labels, n = ndimage.label(lung, structure=np.ones((3, 3))) numbers the lung fields 1..n
    (the default structure is 4-connectivity). np.bincount(labels[lesion], minlength=n + 1) counts
    the lesion's pixels per label; label 0 is the background: leave it out before the argmax.
    """
    raise NotImplementedError("exercise correct_lung_map: see lessons/04_localization/README.md, "
                              "'Step 6: the baselines'")
