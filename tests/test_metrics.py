"""Metrics against hand-computed values."""

import numpy as np
import pytest

from emmr.metrics import accuracy, confusion, macro_f1, precision_recall


def test_macro_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert confusion(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_flag_precision_recall():
    flag = np.array([True, True, False, False])
    truth = np.array([True, False, True, False])
    assert precision_recall(flag, truth) == (0.5, 0.5)
    assert np.isnan(precision_recall(np.zeros(3, bool), truth[:3])[0])


def test_auroc_by_hand():
    from emmr.metrics import auroc

    truth = np.array([True, False, True, False, False])
    score = np.array([0.9, 0.8, 0.4, 0.4, 0.1])
    # positive/negative pairs: (0.9 > 0.8, 0.4, 0.1) = 3; (0.4 vs 0.8: 0, vs 0.4: tie 1/2, vs 0.1: 1) = 1.5 -> 4.5 / 6
    assert auroc(truth, score) == pytest.approx(4.5 / 6)
    assert np.isnan(auroc(np.zeros(3, bool), np.arange(3.0)))


def test_flag_threshold_for_a_precision_or_a_rate_by_hand():
    from emmr.flag import FlagTarget, choose_threshold

    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    truth = np.array([True, False, True, True, False, False])
    # flagging the top 1..6: precision 1, 1/2, 2/3, 3/4, 3/5, 1/2 -> the lowest cut with precision >= 0.6 is 0.5
    threshold, got = choose_threshold(score, truth, FlagTarget.parse("precision:0.6"))
    assert threshold == 0.5 and got["precision"] == pytest.approx(0.6) and got["recall"] == 1.0
    threshold, got = choose_threshold(score, truth, FlagTarget.parse("rate:0.5"))
    assert threshold == 0.7 and got["flag_rate"] == 0.5
    ties = choose_threshold(np.array([0.5, 0.5, 0.1]), np.array([True, False, False]), FlagTarget.parse("precision:0.9"))
    assert ties[0] == 0.5 and ties[1]["flag_rate"] == pytest.approx(2 / 3)  # equal scores are flagged together
    with pytest.raises(ValueError, match="precision:P or rate:R"):
        FlagTarget.parse("recall:0.5")
