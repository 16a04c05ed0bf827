"""The classification head used throughout: Linear -> ReLU -> Dropout -> Linear."""

from __future__ import annotations

from torch import nn


def classifier(in_dim: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))
