"""The record context that per-step members (AE, MMIN) add to every step.

A per-step network (Eq. 5, Eq. 6) sees one slot at a time: at a missing slot that is only the slot
embedding, the same for every record, so it could recover nothing specific to the record. Adding the mean of
the record's observed steps (h values, so the paper's layer sizes stay) gives it the other modalities.
"""

from __future__ import annotations

import torch


def with_context(z_in: torch.Tensor, z: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """z_in + mean over observed slots of z: (B, T, h), (B, T, h), (B, T) -> (B, T, h)."""
    w = observed[..., None].to(z.dtype)
    ctx = (z * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, h)
    return z_in + ctx
