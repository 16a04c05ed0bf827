"""Classification metrics and the key-missing flag's agreement with ground truth (numpy, no sklearn)."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (as scikit-learn's 'macro')."""
    classes = np.union1d(y_true, y_pred)
    f1 = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1)) if f1 else float("nan")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts, rows = true class."""
    return np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)


def precision_recall(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of a boolean flag against boolean truth (nan where undefined)."""
    tp = float(np.sum(flag & truth))
    precision = tp / flag.sum() if flag.sum() else float("nan")
    recall = tp / truth.sum() if truth.sum() else float("nan")
    return precision, recall


def auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of a score against boolean truth (Mann-Whitney U with midranks for ties);
    nan when one class is absent."""
    truth = np.asarray(truth, dtype=bool)
    n_pos = int(truth.sum())
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_fraction(score: np.ndarray, count: int) -> np.ndarray:
    """A flag on the `count` highest scores (ties broken by order): a detector at a given flag rate."""
    flag = np.zeros(len(score), dtype=bool)
    if count > 0:
        flag[np.argsort(-np.asarray(score), kind="stable")[:count]] = True
    return flag
