"""Eq. 10-13: the ensemble that decides where the check finds the missing modality key.

Per member j, from its own heads (Eq. 8-9): L^j_full (B, C) and L^j_without_k (B, M, C).
Eq. 10:  c^j_k = max_c softmax(L^j_without_k)_c;   beta^j = softmax_k(c^j_k)      confidence of each pair head
Eq. 11:  E^j_key = sum_k beta^j_k L^j_without_k                                     the member's pair evidence (logits)
Eq. 12:  alpha = softmax_j(v^T tanh(W V^j + b));  V = sum_j alpha_j V^j             attention over the members
Eq. 13:  y = f_ens(V) where the check fires, L_full of the backbone elsewhere.

Eq. 13 as printed mixes the pair evidence with the encoder output F, of another size. Each member's vote is
V^j = [L^j_full; E^j_key] (2C values): what its encoding of the recovered input says (F, classified) and what
its pairs say, so both enter and stay in the space of class logits; Eq. 12 attends over these votes and f_ens
is one linear layer, 2C -> C. The `max` and `average` fusions replace Eq. 12 by an elementwise max or mean
over the members' votes (ablations).
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig


def pair_evidence(without_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 10-11: L_without (B, M, C) -> E_key (B, C)."""
    confidence = without_logits.softmax(dim=-1).amax(dim=-1)  # Eq. 10, c_k (B, M)
    beta = confidence.softmax(dim=1)  # Eq. 10, (B, M)
    return (beta[..., None] * without_logits).sum(dim=1)  # Eq. 11


class MemberFusion(nn.Module):
    """Eq. 12 (or max / average) over the members' votes."""

    def __init__(self, dim: int, fusion: str):
        super().__init__()
        self.fusion = fusion
        if fusion == "attention":  # W, b and v of Eq. 12
            self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, votes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """votes (B, J, D) -> (V (B, D), alpha (B, J))."""
        if self.fusion == "max":
            return votes.amax(dim=1), torch.full(votes.shape[:2], 1.0 / votes.shape[1], device=votes.device)
        if self.fusion == "average":
            return votes.mean(dim=1), torch.full(votes.shape[:2], 1.0 / votes.shape[1], device=votes.device)
        alpha = self.score(votes).squeeze(-1).softmax(dim=1)  # Eq. 12, (B, J)
        return (alpha[..., None] * votes).sum(dim=1), alpha


class Ensemble(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.num_classes
        self.fusion = MemberFusion(2 * c, config.fusion)
        self.head = nn.Linear(2 * c, c)  # f_ens of Eq. 13
        with torch.no_grad():  # it starts as the fused L_full, and learns from there what the pair evidence adds
            self.head.weight.zero_()
            self.head.weight[:, :c] = torch.eye(c)
            self.head.bias.zero_()

    @staticmethod
    def vote(full_logits: torch.Tensor, without_logits: torch.Tensor) -> torch.Tensor:
        """One member's V^j = [L_full; E_key]: (B, C), (B, M, C) -> (B, 2C)."""
        return torch.cat([full_logits, pair_evidence(without_logits)], dim=-1)

    def forward(self, votes: torch.Tensor) -> torch.Tensor:
        """votes (B, J, 2C) -> ensemble logits (B, C)."""
        fused, _ = self.fusion(votes)
        return self.head(fused)


def switch(key_missing: torch.Tensor, ensemble_logits: torch.Tensor, full_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 13: per sample, the ensemble where the check fires, L_full elsewhere."""
    return torch.where(key_missing[:, None], ensemble_logits, full_logits)
