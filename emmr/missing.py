"""Simulated missingness, the same way in training and evaluation.

At missing rate r, round(r * N) records miss a modality. Records that already miss one keep it missing and
count toward the rate; the rest are drawn among the complete records, each dropping one modality, drawn
uniformly by default (the authors' code draws text twice as often; `probs` can say so).
"""

from __future__ import annotations

import numpy as np

DEFAULT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # the paper's protocol


def simulate_missing(present: np.ndarray, rate: float, rng: np.random.Generator, probs: np.ndarray | None = None) -> np.ndarray:
    """present (N, M) bool -> the *additional* drops (N, M) bool (at most one per record)."""
    n, m = present.shape
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"missing rate must be in [0, 1], got {rate}")
    already = ~present.all(axis=1)
    need = max(0, round(rate * n) - int(already.sum()))
    candidates = np.flatnonzero(~already)
    chosen = rng.choice(candidates, size=min(need, len(candidates)), replace=False)
    drop = np.zeros((n, m), dtype=bool)
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        probs = probs / probs.sum()
    drop[chosen, rng.choice(m, size=len(chosen), p=probs)] = True
    return drop


def seeded_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


def protocol_rng(seed: int, rate: float) -> np.random.Generator:
    """The evaluation masks' generator for one (seed, rate): keyed by the rate itself, so a rate gets the same masks
    whatever other rates are evaluated beside it. Tenths keep the keys they always had (1000 + 10 r, the position
    of r in the protocol's 0, 0.1, ..., 0.5), so every figure measured before stays reproducible."""
    tenths = rate * 10
    if abs(tenths - round(tenths)) < 1e-9:
        return seeded_rng(seed, 1000 + round(tenths))
    return seeded_rng(seed, 2000, round(rate * 1e6))
