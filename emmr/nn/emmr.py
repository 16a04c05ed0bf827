"""EMMR assembled: Eq. 1-2 encoders, the members (Eq. 5-7) with recovery, the check (Eq. 8-9), the
ensemble (Eq. 10-12) and the per-sample switch (Eq. 13).

The first member is the backbone: its recovered input feeds the consistency heads. In training every
member runs on every row (all of them learn); at inference the other members run only on the rows whose
check fires, gathered and scattered back (no Python loop over samples).

The backbone owns the shared representation: the other members and the ensemble read the Eq. 1-2 features,
the slot embeddings, the backbone's representation and its heads' logits without sending gradients back.
So the backbone trains exactly as it would alone (the `tf` baseline), and the ensemble can only add to it on
the rows the check flags. Trained jointly instead, the members' reconstruction losses and the ensemble pulled
the shared encoders their way and the backbone lost accuracy on the unflagged rows (docs/model.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.consistency import Check, ConsistencyHeads, check
from emmr.nn.ensemble import Ensemble, switch
from emmr.nn.layout import Layout, Masks
from emmr.nn.members import build_member
from emmr.nn.modality_encoder import SequenceEncoder
from emmr.nn.recovery import recover
from emmr.nn.slots import SlotEmbedding


@dataclass
class EMMROutput:
    logits: torch.Tensor  # (B, C) Eq. 13
    full_logits: torch.Tensor  # (B, C) Eq. 8
    without_logits: torch.Tensor  # (B, M, C) Eq. 9
    check: Check
    ensemble_used: torch.Tensor  # (B,) bool
    masks: Masks
    ensemble_logits: torch.Tensor | None = None  # (B, C), every row; training only
    reps: list[torch.Tensor] | None = None  # per member (B, M*h); training only
    decoded: list[torch.Tensor] | None = None  # per member (B, T, h); training only


class EMMR(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layout = Layout(config)
        self.encoder = SequenceEncoder(config)  # Eq. 1-2
        self.slots = SlotEmbedding(self.layout.total, config.hidden)
        self.members = nn.ModuleDict({name: build_member(name, config) for name in config.members})  # Eq. 5-7
        self.heads = ConsistencyHeads(config)  # Eq. 8-9
        self.ensemble = Ensemble(config) if config.ensemble else None  # Eq. 10-13

    def embed(self, features: list[torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, Masks]:
        masks = self.layout.masks(lengths)
        return self.encoder(features, masks.observed), masks

    def run_member(self, name: str, z: torch.Tensor, masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (decoded (B, T, h), pooled representation of the recovered input (B, M*h)).

        Only the backbone (the first member) sends gradients into the shared encoders and slot embeddings.
        """
        z_in = self.slots(z)
        if name != next(iter(self.members)):
            z, z_in = z.detach(), z_in.detach()
        decoded = self.members[name](z_in, z, masks)
        recovered = recover(z, decoded, masks.missing_slots)  # Section 3.6
        return decoded, self.layout.pool(recovered, masks.recovered_valid)

    def forward(self, features: list[torch.Tensor], lengths: torch.Tensor, all_members: bool | None = None) -> EMMROutput:
        """features: per modality (B, L_m, d_m); lengths (B, M) -> EMMROutput."""
        all_members = self.training if all_members is None else all_members
        z, masks = self.embed(features, lengths)
        names = list(self.members)
        decoded0, rep0 = self.run_member(names[0], z, masks)
        full, without = self.heads(rep0)
        chk = check(full, without, masks.missing)
        if self.ensemble is None:
            return EMMROutput(full, full, without, chk, torch.zeros_like(chk.key_missing), masks,
                              reps=[rep0], decoded=[decoded0])
        if all_members:
            runs = [self.run_member(n, z, masks) for n in names[1:]]
            reps = [rep0] + [r for _, r in runs]
            ens_reps = torch.stack([rep0.detach()] + reps[1:], dim=1)  # the backbone trains as if alone
            ensemble_logits = self.ensemble(ens_reps, without.detach())
            logits = switch(chk.key_missing, ensemble_logits, full)  # Eq. 13
            return EMMROutput(logits, full, without, chk, chk.key_missing, masks, ensemble_logits, reps,
                              [decoded0] + [d for d, _ in runs])
        rows = chk.key_missing.nonzero().squeeze(1)  # only the flagged rows meet the other members
        logits = full.clone()
        if rows.numel():
            sub_z, sub_masks = z[rows], masks.take(rows)
            reps = [rep0[rows]] + [self.run_member(n, sub_z, sub_masks)[1] for n in names[1:]]
            logits[rows] = self.ensemble(torch.stack(reps, dim=1), without[rows]).to(logits.dtype)  # Eq. 13
        return EMMROutput(logits, full, without, chk, chk.key_missing, masks)
