r"""Evaluation metrics: the article's "test and evaluate our model" section, done more completely.

The article reports accuracy only. On an imbalanced test set that hides a lot (on the Kaggle test set,
answering PNEUMONIA for every image already scores 62.5%), so we report what a screening test is judged
by, with PNEUMONIA as the positive class:

$$
\begin{gathered}
\text{sensitivity} = \frac{TP}{TP + FN}, \quad
\text{specificity} = \frac{TN}{TN + FP}, \\
\text{precision} = \frac{TP}{TP + FP}, \quad
F_1 = \frac{2\,TP}{2\,TP + FP + FN},
\end{gathered}
$$

and the ROC AUC, which needs no threshold: it is the probability that a random PNEUMONIA image gets a
higher score than a random NORMAL one (ties count one half),

$$
\text{AUC} = \frac{1}{n_+ n_-} \sum_{i \in +} \sum_{j \in -}
\Big([s_i > s_j] + \tfrac12 [s_i = s_j]\Big)
= \frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-},
$$

where $R_+$ is the sum of the positives' ranks among all scores (tied scores share their average
rank). The right-hand form is the Mann–Whitney U statistic: $O(n \log n)$ instead of $O(n_+ n_-)$, and
no scikit-learn dependency. A test checks it against the double sum.

The default decision is the argmax of the two log-probabilities, i.e. $p(\text{PNEUMONIA}) \ge 0.5$.
:func:`youden_threshold` picks a threshold on the *validation* split (maximizing
$J = \text{sensitivity} + \text{specificity} - 1$); the test metrics at that threshold are reported
beside the argmax ones. Never choose a threshold on the test split: that is the same leak as choosing
the best epoch on it.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int = 2) -> np.ndarray:
    """Counts ``M[i, j]`` of images of true class i predicted as class j; shape (C, C).

    For two classes: ``[[TN, FP], [FN, TP]]`` with PNEUMONIA (1) positive.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)  # one increment per (true, predicted) pair
    return m


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values get the average of the ranks they span (like scipy's)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]  # one past the end of each run
    avg_rank = (starts + 1 + ends) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return ranks


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve via the Mann–Whitney rank sum (ties count 1/2).

    Args:
        y_true: labels, 1 = positive (PNEUMONIA), 0 = negative.
        scores: any score that is higher for positives, e.g. $p(\\text{PNEUMONIA})$.

    Returns:
        AUC in [0, 1], or ``nan`` when one class is absent (the AUC is undefined then).
    """
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} labels but scores has {s.size}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r_pos = rankdata(s)[y].sum()  # R_+
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score used as threshold (``score >= t``).

    Returns:
        fpr (np.ndarray): ``(T + 1,)`` false-positive rates, from 0 up to 1.
        tpr (np.ndarray): ``(T + 1,)`` true-positive rates, from 0 up to 1.
        thresholds (np.ndarray): ``(T + 1,)`` the score at or above which a point predicts positive:
            ``inf`` first (the point (0, 0)), the lowest score last (the point (1, 1)).
    """
    y = np.asarray(y_true).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")  # highest score first
    s, y = s[order], y[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]  # keep one point per distinct score
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


def youden_threshold(y_true, scores) -> float:
    """The threshold maximizing Youden's $J$ = TPR - FPR (first, i.e. highest, on ties).

    Choose it on the validation split; predictions are positive when ``score >= threshold``.
    Returns 0.5 (the argmax rule) when one class is missing and $J$ is meaningless.
    """
    y = np.asarray(y_true).ravel().astype(bool)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thr = roc_curve(y, scores)
    j = tpr - fpr
    j[0] = -np.inf  # threshold inf predicts nothing positive; never pick it
    return float(thr[int(np.argmax(j))])


def binary_metrics(y_true, p_pneumonia, threshold: float = 0.5) -> dict:
    """All the numbers of a two-class evaluation, PNEUMONIA (1) positive.

    Args:
        y_true: (N,) labels 0 (NORMAL) / 1 (PNEUMONIA).
        p_pneumonia: (N,) predicted probability of PNEUMONIA (``exp`` of the head's output column 1).
        threshold: predict PNEUMONIA when ``p >= threshold``; 0.5 is the argmax of two classes.

    Returns:
        A JSON-ready dict: ``n, threshold, accuracy, sensitivity, specificity, precision, f1, auc,
            tp, fp, tn, fn, confusion`` (``[[TN, FP], [FN, TP]]``). A ratio whose denominator is zero
            is ``nan`` (e.g. specificity with no NORMAL images).
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(p_pneumonia, dtype=np.float64).ravel()
    pred = (p >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred, 2).tolist()

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, y.size),
        "sensitivity": ratio(tp, tp + fn),  # recall of PNEUMONIA: missed cases are FN
        "specificity": ratio(tn, tn + fp),  # recall of NORMAL: false alarms are FP
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "auc": roc_auc(y, p),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "confusion": [[tn, fp], [fn, tp]],
    }
