"""Where each modality sits in the concatenated sequence (Eq. 2), and the masks that follow from lengths.

The concatenated sequence has T = sum_m max_len_m slots; modality m owns slots [offset_m, offset_m + max_len_m).
A modality of length 0 is missing: all its slots are *missing slots*, which recovery fills (Section 3.6) and
which count as valid once recovered. A batch may hold fewer slots (a trimmed layout): modality m its first n_m
steps, where no record of the batch has more than n_m steps of m and none misses m (a missing modality is
recovered at every one of its max_len slots). The result of every record is the same (within float rounding):
what is trimmed is padding, which every attention, pooling and head masks.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from emmr.config import ModelConfig

TRIMMED_CACHE = 4096  # trimmed layouts kept (each a few kB of index tensors)


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


@dataclass(frozen=True)
class SlotLayout:
    """The slots of one batch: modality m has lens[m] slots, its first lens[m] steps (all of max_len_m when the
    layout is the model's full one). Scoring trims the slots that no record of a batch fills (emmr/scorer.py)."""

    lens: tuple[int, ...]  # slots per modality
    segment: torch.Tensor  # (T,) the modality of each slot
    step: torch.Tensor  # (T,) the step of each slot in its modality
    index: torch.Tensor  # (T,) the slot's position in the full layout (which slot embedding it has)
    _slots: dict = field(default_factory=dict, compare=False, repr=False)  # slots_of, cached

    @property
    def total(self) -> int:
        return sum(self.lens)

    def masks(self, lengths: torch.Tensor) -> Masks:
        """lengths (B, M) -> Masks."""
        present = lengths > 0
        per_slot_len = lengths[:, self.segment]  # (B, T)
        observed = self.step[None, :] < per_slot_len
        missing_slots = ~present[:, self.segment]
        return Masks(present=present, observed=observed, missing_slots=missing_slots,
                     recovered_valid=observed | missing_slots)

    def slots_of(self, modalities: list[int]) -> torch.Tensor:
        """The slot indices (T',) of the given modalities, in layout order (made from `lens` on the host, once)."""
        key = tuple(sorted(modalities))
        if key not in self._slots:
            starts = [sum(self.lens[:j]) for j in range(len(self.lens))]
            with torch.inference_mode(False):  # a cached index must serve training too, not only inference
                self._slots[key] = torch.tensor([starts[j] + s for j in key for s in range(self.lens[j])],
                                                dtype=torch.long, device=self.segment.device)
        return self._slots[key]

    def pool(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked mean of each modality's slots, concatenated: (B, T, h), (B, T) -> (B, M * h)."""
        pooled = []
        start = 0
        for n in self.lens:
            v = valid[:, start : start + n, None].to(z.dtype)  # (B, n, 1)
            s = (z[:, start : start + n] * v).sum(dim=1)  # (B, h)
            pooled.append(s / v.sum(dim=1).clamp_min(1.0))
            start += n
        return torch.cat(pooled, dim=-1)


class Layout(nn.Module):
    """Slot bookkeeping; a module only so that its index buffers follow the model's device. `full()` is the model's
    layout, `trimmed(lens)` the layout of a batch whose modalities hold fewer slots."""

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
        self._trimmed: OrderedDict = OrderedDict()  # lens -> SlotLayout, the TRIMMED_CACHE most recently used

    def full(self) -> SlotLayout:
        return self.trimmed(tuple(self.max_lens))

    def trimmed(self, lens: tuple[int, ...]) -> SlotLayout:
        """The layout with lens[m] slots for modality m (each at most its max_len); cached per lens and device (the
        TRIMMED_CACHE most recently used: a long-running job meets many combinations of lengths)."""
        lens = tuple(int(n) for n in lens)
        key = (lens, self.segment.device)
        layout = self._trimmed.get(key)
        if layout is not None:
            with contextlib.suppress(KeyError):  # another thread may have just evicted it: it is still returned
                self._trimmed.move_to_end(key)
            return layout
        if len(lens) != len(self.max_lens) or any(not 0 <= n <= top for n, top in zip(lens, self.max_lens)):
            raise ValueError(f"slots per modality {lens}: expected {len(self.max_lens)} counts, each at most "
                             f"{self.max_lens}")
        starts = [sum(self.max_lens[:j]) for j in range(len(lens))]
        with torch.inference_mode(False):  # cached: must serve training too, not only inference
            index = torch.tensor([starts[j] + s for j, n in enumerate(lens) for s in range(n)], dtype=torch.long,
                                 device=self.segment.device)
            layout = SlotLayout(lens, self.segment[index], self.step[index], index)
        self._trimmed[key] = layout
        while len(self._trimmed) > TRIMMED_CACHE:
            with contextlib.suppress(KeyError):
                self._trimmed.popitem(last=False)
        return layout

    def masks(self, lengths: torch.Tensor) -> Masks:
        """lengths (B, M) -> Masks of the full layout."""
        return self.full().masks(lengths)

    def slots_of(self, modalities: list[int]) -> torch.Tensor:
        return self.full().slots_of(modalities)

    def pool(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.full().pool(z, valid)
