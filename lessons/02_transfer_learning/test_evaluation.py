"""Lesson 02, step 4, evaluation (``pneumonia_cam.steps.metrics``): every metric against its definition (no scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumonia_cam.steps.metrics import (
    binary_metrics,
    confusion_matrix,
    rankdata,
    roc_auc,
    roc_curve,
    youden_threshold,
)


def brute_force_auc(y, s) -> float:
    """The definition: P(score of a positive > score of a negative), ties count 1/2."""
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed():
    # Pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.4,0.1) win, (0.4,0.4) tie -> 3.5 / 4.
    assert roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.1, 0.4]) == 0.875


@pytest.mark.parametrize("seed", range(20))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes present
    s = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s), abs=1e-12)


def test_auc_extremes_and_undefined():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.9]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_roc_curve_hand_computed():
    # Scores (pos 0.8, 0.4; neg 0.1, 0.4), "positive" means score >= threshold. Thresholds high to low:
    # inf: none (0, 0); 0.8: one positive (fpr 0, tpr 1/2); 0.4: both positives and the tied negative
    # (1/2, 1); 0.1: everything (1, 1).
    fpr, tpr, thr = roc_curve([1, 1, 0, 0], [0.8, 0.4, 0.1, 0.4])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert thr.tolist() == [np.inf, 0.8, 0.4, 0.1]


def test_roc_curve_area_equals_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.5 * y, 1)  # informative, with ties
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and thr[0] == np.inf
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids = tie rule 1/2
    assert area == pytest.approx(roc_auc(y, s), abs=1e-12)


def test_confusion_matrix_layout():
    m = confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert m.tolist() == [[1, 1], [1, 2]]  # [[TN, FP], [FN, TP]]


def test_binary_metrics_hand_computed():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.1, 0.4, 0.05]
    m = binary_metrics(y, p)  # threshold 0.5: TP 3, FN 1, FP 1, TN 5
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 5)
    assert m["accuracy"] == 0.8
    assert m["sensitivity"] == 0.75
    assert m["specificity"] == 5 / 6
    assert m["precision"] == 0.75
    assert m["f1"] == pytest.approx(0.75)
    assert m["confusion"] == [[5, 1], [1, 3]]
    assert m["auc"] == pytest.approx(brute_force_auc(y, p))


def test_binary_metrics_threshold_and_empty_denominators():
    m = binary_metrics([1, 1], [0.6, 0.4], threshold=0.3)  # no NORMAL images
    assert m["sensitivity"] == 1.0 and m["threshold"] == 0.3
    assert math.isnan(m["specificity"]) and math.isnan(m["auc"])


def test_youden_threshold_separates_perfectly_separable_scores():
    y = [0, 0, 0, 1, 1, 1]
    s = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]  # argmax (0.5) would call everything NORMAL
    t = youden_threshold(y, s)
    assert t == 0.04
    assert binary_metrics(y, s, t)["accuracy"] == 1.0
    assert binary_metrics(y, s)["accuracy"] == 0.5
    assert youden_threshold([1, 1], [0.2, 0.9]) == 0.5  # one class: fall back to argmax
