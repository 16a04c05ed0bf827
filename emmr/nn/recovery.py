"""Section 3.6: recovery. The missing modality's segment of the input is replaced by the member's decoder
output at those slots; every other slot keeps the input as it was."""

from __future__ import annotations

import torch


def recover(z: torch.Tensor, decoded: torch.Tensor, missing_slots: torch.Tensor) -> torch.Tensor:
    """(B, T, h), (B, T, h), (B, T) -> (B, T, h)."""
    return torch.where(missing_slots[..., None], decoded, z)
