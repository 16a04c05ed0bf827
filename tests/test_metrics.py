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
