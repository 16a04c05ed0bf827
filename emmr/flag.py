"""The key-missing flag's threshold: chosen on validation for a stated target, stored with the weights.

A target is `precision:P` (the lowest threshold whose flags are at least P precise on validation: the most
recall at that precision) or `rate:R` (flag a fraction R of the records that miss one modality). The truth on
validation is the teacher's (emmr/keytruth.py), so the same rule serves real data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
KINDS = ("precision", "rate")


@dataclass(frozen=True)
class FlagTarget:
    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "FlagTarget":
        kind, _, value = str(text).partition(":")
        try:
            target = cls(kind.strip(), float(value))
        except ValueError:
            raise ValueError(f"flag target must be precision:P or rate:R with a number in (0, 1], got {text!r}") from None
        if target.kind not in KINDS or not 0.0 < target.value <= 1.0:
            raise ValueError(f"flag target must be precision:P or rate:R with a number in (0, 1], got {text!r}")
        return target

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def choose_threshold(score: np.ndarray, truth: np.ndarray, target: FlagTarget) -> tuple[float, dict]:
    """score (N,) on records that miss one modality, truth (N,) bool -> (threshold, what it gives on them).

    Flags are `score >= threshold`; records with equal scores are flagged together."""
    if len(score) == 0:
        return 0.5, {"records": 0}
    order = np.argsort(-score, kind="stable")
    s, t = score[order], truth[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last record of each run of equal scores: a possible cut
    flagged = np.arange(1, len(s) + 1)[last]
    hits = np.cumsum(t)[last]
    cuts = s[last]
    if target.kind == "rate":
        i = int(np.argmin(np.abs(flagged / len(s) - target.value)))
    else:
        precision = hits / flagged
        ok = np.flatnonzero(precision >= target.value)
        if len(ok):
            i = int(ok[-1])
        else:
            i = int(np.argmax(precision))
            log.warning("no threshold reaches precision %.2f on validation (best %.3f): using the most precise",
                        target.value, precision[i])
    threshold = float(cuts[i])
    n_true = max(int(t.sum()), 1)
    return threshold, {"records": int(len(s)), "flag_rate": float(flagged[i] / len(s)),
                       "precision": float(hits[i] / flagged[i]), "recall": float(hits[i] / n_true)}
