"""Eq. 10-13: the ensemble that decides when the check finds the missing modality key.

Eq. 10:  c_k = max_c softmax(L_without_k)_c            confidence of each pair head
Eq. 11:  beta_k = c_k / sum_j c_j;  r = [beta_1 softmax(L_without_1); ...; beta_M softmax(L_without_M)]
Eq. 12:  alpha = softmax_j(v^T tanh(W R_j + b));  F = sum_j alpha_j R_j      over the members' representations
Eq. 13:  y = f_ens([F; r]) if the check fires, else L_full.

Eq. 13 as printed mixes r (M x C values) with F (of the hidden size) in one expression. They live in
different spaces, so we concatenate them and let one learned head read both: f_ens is a classifier over
[F; r], of size M*h + M*C. The `max` and `average` fusions replace Eq. 12 by an elementwise max or mean over
members (ablations).
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.heads import classifier


def pair_evidence(without_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11: (B, M, C) -> r (B, M * C)."""
    probs = without_logits.softmax(dim=-1)  # (B, M, C)
    confidence = probs.amax(dim=-1)  # Eq. 10, (B, M)
    beta = confidence / confidence.sum(dim=1, keepdim=True)  # Eq. 11
    return (beta[..., None] * probs).flatten(1)  # (B, M * C)


class MemberFusion(nn.Module):
    """Eq. 12 (or max / average)."""

    def __init__(self, dim: int, fusion: str):
        super().__init__()
        self.fusion = fusion
        if fusion == "attention":  # W, b and v of Eq. 12
            self.score = nn.Sequential(nn.Linear(dim, max(dim // 2, 1)), nn.Tanh(), nn.Linear(max(dim // 2, 1), 1, bias=False))

    def forward(self, reps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """reps (B, J, D) -> (F (B, D), alpha (B, J))."""
        if self.fusion == "max":
            return reps.amax(dim=1), torch.full(reps.shape[:2], 1.0 / reps.shape[1], device=reps.device)
        if self.fusion == "average":
            return reps.mean(dim=1), torch.full(reps.shape[:2], 1.0 / reps.shape[1], device=reps.device)
        alpha = self.score(reps).squeeze(-1).softmax(dim=1)  # Eq. 12, (B, J)
        return (alpha[..., None] * reps).sum(dim=1), alpha


class Ensemble(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        m, h, c = len(config.modalities), config.hidden, config.num_classes
        self.fusion = MemberFusion(m * h, config.fusion)
        self.head = classifier(m * h + m * c, h, c, config.dropout)  # f_ens of Eq. 13

    def forward(self, reps: torch.Tensor, without_logits: torch.Tensor) -> torch.Tensor:
        """reps (B, J, M*h), without (B, M, C) -> ensemble logits (B, C)."""
        fused, _ = self.fusion(reps)
        return self.head(torch.cat([fused, pair_evidence(without_logits)], dim=-1))


def switch(key_missing: torch.Tensor, ensemble_logits: torch.Tensor, full_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 13: per sample, the ensemble where the check fires, L_full elsewhere."""
    return torch.where(key_missing[:, None], ensemble_logits, full_logits)
