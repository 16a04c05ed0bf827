"""EMMR assembled: Eq. 1-2 encoders, the members (Eq. 5-7) with recovery (Section 3.6), each member's heads
(Eq. 8-9), the check, the ensemble (Eq. 10-12) and the per-sample switch (Eq. 13).

The first member is the backbone. Training has two stages (emmr/train.py): the backbone (shared encoders,
slot embeddings, its member and heads) alone, exactly the `tf` baseline; then, with the backbone frozen, the
other members, their heads and the ensemble. So a row the check does not flag gets exactly the backbone's
output: EMMR can only change the flagged rows.

Modes of `forward`:
- "backbone": the backbone only (training stage 1; single-member models);
- "all": every member and the ensemble on every row (training stage 2; the ensemble-everywhere control);
- "flagged": inference: the backbone on every row (decoding only the rows that miss a modality, pair heads
  only there), the other members and the ensemble only on the flagged rows, gathered and scattered back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn import attention
from emmr.nn.consistency import Check, ConsistencyHeads, check
from emmr.nn.ensemble import Ensemble, switch
from emmr.nn.layout import Layout, Masks, SlotLayout
from emmr.nn.members import build_member
from emmr.nn.modality_encoder import SequenceEncoder
from emmr.nn.recovery import recover
from emmr.nn.slots import SlotEmbedding

MODES = ("backbone", "all", "flagged")


@dataclass
class MemberRun:
    """One member's pass over a batch."""

    decoded: torch.Tensor  # (B, T, h) reconstruction from the observed slots
    recovered: torch.Tensor  # (B, T, h) I: Eq. 1-2 features, the missing segment decoded
    encoded: torch.Tensor  # (B, T, h) F: the member's encoding of I
    full_logits: torch.Tensor  # (B, C) Eq. 8
    without_logits: torch.Tensor  # (B, M, C) Eq. 9


@dataclass
class EMMROutput:
    logits: torch.Tensor  # (B, C) Eq. 13
    full_logits: torch.Tensor  # (B, C) the backbone's Eq. 8
    without_logits: torch.Tensor  # (B, M, C) the backbone's Eq. 9 (zeros where not computed: rows missing nothing)
    check: Check
    ensemble_used: torch.Tensor  # (B,) bool
    masks: Masks
    runs: dict[str, MemberRun] | None = None  # modes "backbone" and "all"
    ensemble_logits: torch.Tensor | None = None  # (B, C) on every row, mode "all"


class EMMR(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layout = Layout(config)
        self.encoder = SequenceEncoder(config)  # Eq. 1-2
        own = config.member_encoders == "own" and config.ensemble  # the other members' own Eq. 1-2 (stage 2 trains them)
        self.member_encoders = nn.ModuleDict({n: SequenceEncoder(config) for n in config.members[1:]}) if own else None
        self.slots = SlotEmbedding(self.layout.total, config.hidden)
        self.members = nn.ModuleDict({name: build_member(name, config) for name in config.members})  # Eq. 5-7
        self.heads = nn.ModuleDict({name: ConsistencyHeads(config) for name in config.members})  # Eq. 8-9
        self.ensemble = Ensemble(config) if config.ensemble else None  # Eq. 10-13
        self.register_buffer("flag_threshold", torch.tensor(0.5))  # chosen on validation (emmr/flag.py)
        self.backbone_frozen = False

    @property
    def backbone(self) -> str:
        return self.config.members[0]

    def backbone_modules(self) -> list[nn.Module]:
        return [self.encoder, self.slots, self.members[self.backbone], self.heads[self.backbone]]

    def freeze_backbone(self) -> None:
        """Training stage 2: the backbone's weights stay as they are, and it runs without dropout."""
        self.backbone_frozen = True
        for module in self.backbone_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "EMMR":
        super().train(mode)
        if self.backbone_frozen:
            for module in self.backbone_modules():
                module.eval()
        return self

    def layout_of(self, features: list[torch.Tensor], lengths: torch.Tensor) -> SlotLayout:
        """The batch's slots: modality m has features[m].shape[1] of them. Shorter than max_len_m only when no row
        misses m (a missing modality is recovered at all of its max_len slots); checked on the CPU, where it is free
        (emmr/scorer.py makes its batches so)."""
        layout = self.layout.trimmed(tuple(x.shape[1] for x in features))
        if lengths.device.type == "cpu":
            for j, (n, top) in enumerate(zip(layout.lens, self.layout.max_lens)):
                if n < top and bool((lengths[:, j] == 0).any()):
                    raise ValueError(f"modality {self.config.modalities[j].name!r} has {n} of its {top} steps in this "
                                     "batch, but a record misses it: recovery needs all of them")
        return layout

    def embed(self, features: list[torch.Tensor], lengths: torch.Tensor,
              layout: SlotLayout | None = None) -> tuple[torch.Tensor, Masks]:
        """Eq. 1-2 over the batch's slots (layout_of when not given) -> (Z (B, T, h), masks)."""
        masks = (layout or self.layout_of(features, lengths)).masks(lengths)
        return self.encoder(features, masks.observed), masks

    def encoder_of(self, name: str) -> SequenceEncoder:
        """The Eq. 1-2 that member `name` reads: the backbone's, or with `member_encoders: own` its own."""
        if self.member_encoders is None or name == self.backbone:
            return self.encoder
        return self.member_encoders[name]

    def member_input(self, name: str, z: torch.Tensor, features: list[torch.Tensor], masks: Masks) -> torch.Tensor:
        """Z for member `name`: the backbone's z, or its own encoding of the same features."""
        encoder = self.encoder_of(name)
        return z if encoder is self.encoder else encoder(features, masks.observed)

    def run_member(self, name: str, z: torch.Tensor, masks: Masks, layout: SlotLayout) -> MemberRun:
        """Every pass of member `name` on every row (z: its Eq. 1-2, member_input)."""
        member, heads = self.members[name], self.heads[name]
        decoded = member.reconstruct(self.slots(z, layout.index), z, masks)
        recovered = recover(z, decoded, masks.missing_slots)  # Section 3.6
        encoded = member.represent(self.slots(recovered, layout.index), recovered, masks.recovered_valid)
        return MemberRun(decoded, recovered, encoded, heads.forward_full(encoded, masks.recovered_valid, layout),
                         heads.forward_without(recovered, masks.recovered_valid, layout))

    def forward(self, features: list[torch.Tensor], lengths: torch.Tensor, mode: str | None = None) -> EMMROutput:
        """features: per modality (B, L_m, d_m), L_m at most max_len_m (see layout_of); lengths (B, M) -> EMMROutput."""
        mode = mode or ("flagged" if not self.training else "all" if self.backbone_frozen else "backbone")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "flagged":
            return self._infer(features, lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            layout = self.layout_of(features, lengths)
            z, masks = self.embed(features, lengths, layout)
            base = self.run_member(self.backbone, z, masks, layout)
        chk = check(base.full_logits, base.without_logits, masks.missing, self.flag_threshold)
        runs = {self.backbone: base}
        if mode == "backbone" or self.ensemble is None:
            return EMMROutput(base.full_logits, base.full_logits, base.without_logits, chk,
                              torch.zeros_like(chk.key_missing), masks, runs)
        for name in self.config.members[1:]:
            runs[name] = self.run_member(name, self.member_input(name, z, features, masks), masks, layout)
        votes = torch.stack([Ensemble.vote(r.full_logits, r.without_logits) for r in runs.values()], dim=1)
        ensemble_logits = self.ensemble(votes)
        logits = switch(chk.key_missing, ensemble_logits, base.full_logits)  # Eq. 13
        return EMMROutput(logits, base.full_logits, base.without_logits, chk, chk.key_missing, masks, runs,
                          ensemble_logits)

    def _infer(self, features: list[torch.Tensor], lengths: torch.Tensor) -> EMMROutput:
        """Mode "flagged": only the work each row needs. With fused attention (the default; attention.reference()
        computes as before issue #14) also only the slots and heads whose results are read: no encoder for a modality
        that no row has, the backbone's reconstruction encoded over the present modalities' slots and decoded at the
        missing ones only, L_without_k for a row's missing modalities only (the check reads nothing else; the flagged
        rows get every k, which the ensemble's votes read). without_logits is zero where not computed."""
        lean = attention.fused()
        layout = self.layout_of(features, lengths)
        masks = layout.masks(lengths)
        present = masks.present.any(dim=0).tolist() if lean else None  # (M,) on the host: one sync on a GPU
        z = self.encoder(features, masks.observed, absent=[not p for p in present] if lean else None)
        backbone, heads = self.members[self.backbone], self.heads[self.backbone]
        c = self.config.num_classes
        recovered = z
        incomplete = masks.missing.any(dim=1).nonzero().squeeze(1)  # rows that miss a modality
        without = z.new_zeros(len(z), len(self.config.modalities), c)
        if incomplete.numel():
            whole = incomplete.numel() == len(z)  # a length bucket of rows that miss a modality: no gather
            sub_z, sub_masks = (z, masks) if whole else (z[incomplete], masks.take(incomplete))
            if lean and hasattr(backbone, "reconstruct_at"):
                sub_missing = sub_masks.missing.any(dim=0).tolist()
                query = layout.slots_of([j for j, m in enumerate(sub_missing) if m])
                keep = layout.slots_of([j for j, p in enumerate(sub_masks.present.any(dim=0).tolist()) if p])
                decoded = backbone.reconstruct_at(self.slots(sub_z, layout.index), sub_masks, keep, query)
                sub_recovered = sub_z.clone()
                sub_recovered[:, query] = recover(sub_z[:, query], decoded.to(z.dtype), sub_masks.missing_slots[:, query])
            else:
                decoded = backbone.reconstruct(self.slots(sub_z, layout.index), sub_z, sub_masks)
                sub_recovered = recover(sub_z, decoded.to(z.dtype), sub_masks.missing_slots)  # Section 3.6
            if whole:
                recovered = sub_recovered
            else:
                recovered = z.clone()
                recovered[incomplete] = sub_recovered
            if lean:
                sub_without = heads.forward_without(sub_recovered, sub_masks.recovered_valid, layout,
                                                    which=sub_masks.missing)
            else:
                sub_without = heads.forward_without(sub_recovered, sub_masks.recovered_valid, layout)
            if whole:
                without = sub_without.to(z.dtype)
            else:
                without[incomplete] = sub_without.to(z.dtype)
        encoded = backbone.represent(self.slots(recovered, layout.index), recovered, masks.recovered_valid)
        full = heads.forward_full(encoded, masks.recovered_valid, layout)
        chk = check(full, without, masks.missing, self.flag_threshold)
        logits = full.clone()
        rows = chk.key_missing.nonzero().squeeze(1)  # only the flagged rows meet the other members
        if self.ensemble is not None and rows.numel():
            sub_z, sub_masks = z[rows], masks.take(rows)
            if lean:  # the ensemble's votes read every L_without_k of these rows
                without[rows] = heads.forward_without(recovered[rows], sub_masks.recovered_valid, layout,
                                                      which=sub_masks.present, out=without[rows])
            votes = [Ensemble.vote(full[rows], without[rows])]
            sub_features = [x[rows] for x in features] if self.member_encoders is not None else features
            votes += [Ensemble.vote(r.full_logits, r.without_logits)
                      for r in (self.run_member(n, self.member_input(n, sub_z, sub_features, sub_masks), sub_masks, layout)
                                for n in self.config.members[1:])]
            logits[rows] = self.ensemble(torch.stack(votes, dim=1)).to(logits.dtype)  # Eq. 13
        used = chk.key_missing if self.ensemble is not None else torch.zeros_like(chk.key_missing)
        return EMMROutput(logits, full, without, chk, used, masks)
