"""The heads: the plain classifier (Linear -> ReLU -> Dropout -> Linear), and the attention head of Eq. 8-9.

Eq. 8-9 are FC(MHA(I)): a multi-head self-attention block over the slots the head reads (residual and
LayerNorm, pre-LN with `norm_first`; key padding mask), a masked mean per modality, the means concatenated, then
the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.nn.attention import attend


def classifier(in_dim: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def segment_mean(x: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """Masked mean of the slots of each segment, concatenated: x (B, T, h), valid (B, T), segments (T,) in
    [0, count) -> (B, count * h)."""
    onehot = (segments[None, :, None] == torch.arange(count, device=x.device)[None, None, :])  # (1, T, S)
    w = onehot.to(x.dtype) * valid[..., None].to(x.dtype)  # (B, T, S)
    sums = torch.einsum("bts,bth->bsh", w, x)  # (B, S, h)
    return (sums / w.sum(dim=1)[..., None].clamp_min(1.0)).flatten(1)


class AttentionHead(nn.Module):
    """FC(MHA(I)) over the slots of `count` modalities (Eq. 8 with every modality, Eq. 9 with all but one)."""

    def __init__(self, count: int, hidden: int, heads: int, classes: int, dropout: float, norm_first: bool = True):
        super().__init__()
        self.count = count
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.norm_first = norm_first
        self.classify = classifier(self.count * hidden, hidden, classes, dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """x (B, T', h), valid (B, T'), segments (T',): which of the head's modalities each slot is (0..count-1)
        -> logits (B, C)."""
        key_padding = ~valid & valid.any(dim=1, keepdim=True)  # a row with nothing valid attends to zeros, no NaN
        q = self.norm(x) if self.norm_first else x
        a = attend(self.attention, q, q, key_padding)
        y = x + a if self.norm_first else self.norm(x + a)
        return self.classify(segment_mean(y, valid, segments, self.count))
