"""Learned slot embeddings: which modality and which step a slot of the concatenated sequence is.

The members see Z (Eq. 2) plus these, so that a decoder knows which modality to reconstruct at a missing
slot (where Z is zero). Z itself, what recovery keeps at observed slots, does not include them.
"""

from __future__ import annotations

import torch
from torch import nn


class SlotEmbedding(nn.Module):
    def __init__(self, slots: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(slots, hidden) * 0.02)

    def forward(self, z: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, T, h) + the embeddings of its slots: all of them, or those at `index` (T,) of a trimmed layout."""
        return z + (self.weight if index is None or len(index) == len(self.weight) else self.weight[index])[None]
