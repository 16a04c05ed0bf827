"""Eq. 8-9: a member's consistency heads, and the check that scores whether a missing modality is key.

Eq. 8:  L_full = FC(MHA(F)): what the record says with the missing modality restored. F is the member's
        encoding of the recovered full input (members/__init__.py), every modality's slots.
Eq. 9:  L_without_k = FC(MHA(I_{-k})): what the other modalities say *on their own*: the recovered input I
        (Eq. 1-2 features, the missing segment decoded) at the slots of every modality but k. It reads I, not F,
        because F mixes every modality into every slot (attention): the head must not see k. It is trained to
        give the label of the record with k neutralised (emmr/keytruth.py), not the full label: trained on the
        full label, both heads estimate P(y | observed) and differ only by noise.
Check:  k missing is key when the full label differs from the label the others give. The score
        s_k = 1 - sum_c softmax(L_full)_c softmax(L_without_k)_c is the probability that the two differ when
        each head's answer is drawn from its distribution: P(k is key | observed) when the heads are calibrated
        (the paper compares the two argmaxes; the score keeps how sure each head is). The record's
        score is the largest s_k over its missing modalities (0 when nothing is missing), and it is flagged
        when the score reaches the threshold chosen on validation (emmr/flag.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.heads import AttentionHead
from emmr.nn.layout import SlotLayout


class ConsistencyHeads(nn.Module):
    """One member's L_full (Eq. 8) and L_without_k for every k (Eq. 9), over the slots of a batch's layout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        m, h, c = len(config.modalities), config.hidden, config.num_classes
        self.full = AttentionHead(m, h, config.heads, c, config.dropout, config.norm_first)  # Eq. 8
        self.without = nn.ModuleList(AttentionHead(m - 1, h, config.heads, c, config.dropout, config.norm_first)
                                     for _ in range(m))  # Eq. 9

    def forward_full(self, encoded: torch.Tensor, valid: torch.Tensor, layout: SlotLayout) -> torch.Tensor:
        """F (B, T, h), valid (B, T) -> L_full (B, C)."""
        return self.full(encoded, valid, layout.segment)

    def forward_without(self, recovered: torch.Tensor, valid: torch.Tensor, layout: SlotLayout,
                        which: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """I (B, T, h), valid (B, T) -> L_without (B, M, C). With `which` (B, M) bool: only L_without_k[b] where
        which[b, k] (each head on its rows), written into `out` (B, M, C; zeros when not given), the rest as it was."""
        if which is None:
            return torch.stack([self._without(k, recovered, valid, layout) for k in range(len(self.without))], dim=1)
        if out is None:
            out = recovered.new_zeros(len(recovered), len(self.without), self.full.classify[-1].out_features)
        for k in range(len(self.without)):
            rows = which[:, k].nonzero().squeeze(1)
            if rows.numel() == len(out):  # every row (a length bucket: its rows miss the same modalities)
                out[:, k] = self._without(k, recovered, valid, layout).to(out.dtype)
            elif rows.numel():
                out[rows, k] = self._without(k, recovered[rows], valid[rows], layout).to(out.dtype)
        return out

    def _without(self, k: int, recovered: torch.Tensor, valid: torch.Tensor, layout: SlotLayout) -> torch.Tensor:
        """L_without_k (B, C): the head of every modality but k, over their slots."""
        slots = layout.slots_of([j for j in range(len(self.without)) if j != k])
        segments = layout.segment[slots]
        return self.without[k](recovered[:, slots], valid[:, slots], segments - (segments > k).long())


@dataclass
class Check:
    score: torch.Tensor  # (B,) float: P(a missing modality is key), 0 when nothing is missing
    key_missing: torch.Tensor  # (B,) bool: score >= threshold
    key_modality: torch.Tensor  # (B,) the flagged missing modality (highest score); -1 when not flagged
    label_full: torch.Tensor  # (B,) argmax L_full
    label_pair: torch.Tensor  # (B,) argmax L_without_k for that modality; -1 when nothing is missing


def check(full_logits: torch.Tensor, without_logits: torch.Tensor, missing: torch.Tensor,
          threshold: torch.Tensor | float) -> Check:
    """full (B, C), without (B, M, C), missing (B, M) bool, threshold -> Check. Vectorised over the batch."""
    p_full = full_logits.float().softmax(dim=-1)  # (B, C)
    p_without = without_logits.float().softmax(dim=-1)  # (B, M, C)
    label_without = without_logits.argmax(dim=-1)  # (B, M)
    per_modality = 1.0 - (p_full[:, None, :] * p_without).sum(dim=-1)  # (B, M): s_k
    per_modality = torch.where(missing, per_modality, torch.full_like(per_modality, -1.0))
    best, pick = per_modality.max(dim=1)  # (B,)
    any_missing = missing.any(dim=1)
    score = torch.where(any_missing, best, torch.zeros_like(best))
    flagged = any_missing & (score >= threshold)
    none = torch.full_like(pick, -1)
    return Check(score=score, key_missing=flagged, key_modality=torch.where(flagged, pick, none),
                 label_full=full_logits.argmax(dim=-1),
                 label_pair=torch.where(any_missing, label_without.gather(1, pick[:, None]).squeeze(1), none))
