"""Where each modality sits in the concatenated sequence (Eq. 2), and the masks that follow from lengths.

The concatenated sequence has T = sum_m max_len_m slots; modality m owns slots [offset_m, offset_m + max_len_m).
A modality of length 0 is missing: all its slots are *missing slots*, which recovery fills (Section 3.6) and
which count as valid once recovered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emmr.config import ModelConfig


@dataclass(frozen=True)
class Masks:
    """Boolean masks of one batch; B rows, M modalities, T slots."""

    present: torch.Tensor  # (B, M) the record has the modality
    observed: torch.Tensor  # (B, T) a real step of a present modality
    missing_slots: torch.Tensor  # (B, T) every slot of a missing modality
    recovered_valid: torch.Tensor  # (B, T) observed | missing_slots: what counts after recovery

    @property
    def missing(self) -> torch.Tensor:
        return ~self.present

    def take(self, index: torch.Tensor) -> "Masks":
        return Masks(self.present[index], self.observed[index], self.missing_slots[index], self.recovered_valid[index])


class Layout(nn.Module):
    """Slot bookkeeping; a module only so that its index buffers follow the model's device."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        lens = [m.max_len for m in config.modalities]
        self.max_lens = lens
        self.total = sum(lens)
        seg, step = [], []
        for j, n in enumerate(lens):
            seg += [j] * n
            step += list(range(n))
        self.register_buffer("segment", torch.tensor(seg, dtype=torch.long), persistent=False)  # (T,) modality
        self.register_buffer("step", torch.tensor(step, dtype=torch.long), persistent=False)  # (T,) step in it

    def masks(self, lengths: torch.Tensor) -> Masks:
        """lengths (B, M) -> Masks."""
        present = lengths > 0
        per_slot_len = lengths[:, self.segment]  # (B, T)
        observed = self.step[None, :] < per_slot_len
        missing_slots = ~present[:, self.segment]
        return Masks(present=present, observed=observed, missing_slots=missing_slots,
                     recovered_valid=observed | missing_slots)

    def slots_of(self, modalities: list[int]) -> torch.Tensor:
        """The slot indices (T',) of the given modalities, in layout order."""
        keep = torch.zeros(self.total, dtype=torch.bool, device=self.segment.device)
        for j in modalities:
            keep |= self.segment == j
        return keep.nonzero().squeeze(1)

    def pool(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked mean of each modality's slots, concatenated: (B, T, h), (B, T) -> (B, M * h)."""
        pooled = []
        start = 0
        for n in self.max_lens:
            v = valid[:, start : start + n, None].to(z.dtype)  # (B, n, 1)
            s = (z[:, start : start + n] * v).sum(dim=1)  # (B, h)
            pooled.append(s / v.sum(dim=1).clamp_min(1.0))
            start += n
        return torch.cat(pooled, dim=-1)
