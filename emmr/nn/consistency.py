"""Eq. 8-9: the consistency heads and the check that decides whether a missing modality is key.

Eq. 8:  L_full = f_full([p_1; ...; p_M]): a head over the pooled recovered input of every modality.
Eq. 9:  L_without_k = f_k([p_j for j != k]): a head per modality k over the others (with three modalities,
        the paper's pairs L_va, L_vt, L_at are L_without_t, L_without_a, L_without_v).
Check:  a missing modality k is key when argmax L_full != argmax L_without_k.

With two modalities missing (say a and v, only t observed), both are recovered; the flag fires when
dropping either recovered modality flips the label (L_without_a or L_without_v disagrees with L_full), and
`key_modality` names the one whose head is the more confident. A record with nothing missing is never
flagged. A record with every modality missing is rejected before it reaches the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.heads import classifier


class ConsistencyHeads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        m, h, c = len(config.modalities), config.hidden, config.num_classes
        self.full = classifier(m * h, h, c, config.dropout)  # Eq. 8
        self.without = nn.ModuleList(classifier((m - 1) * h, h, c, config.dropout) for _ in range(m))  # Eq. 9
        self.hidden = h

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (B, M * h) -> (L_full (B, C), L_without (B, M, C))."""
        parts = pooled.split(self.hidden, dim=-1)  # M x (B, h)
        without = [head(torch.cat(parts[:k] + parts[k + 1 :], dim=-1)) for k, head in enumerate(self.without)]
        return self.full(pooled), torch.stack(without, dim=1)


@dataclass
class Check:
    label_full: torch.Tensor  # (B,) argmax L_full
    label_pair: torch.Tensor  # (B,) argmax L_without_k for the reported modality k; -1 when nothing is missing
    key_missing: torch.Tensor  # (B,) bool: some missing modality is key
    key_modality: torch.Tensor  # (B,) index of the key modality, -1 when none


def check(full_logits: torch.Tensor, without_logits: torch.Tensor, missing: torch.Tensor) -> Check:
    """full (B, C), without (B, M, C), missing (B, M) bool -> Check. Vectorised over the batch."""
    label_full = full_logits.argmax(dim=-1)  # (B,)
    label_without = without_logits.argmax(dim=-1)  # (B, M)
    flagged = (label_without != label_full[:, None]) & missing  # (B, M)
    key_missing = flagged.any(dim=1)
    confidence = without_logits.softmax(dim=-1).amax(dim=-1)  # (B, M) in (0, 1]
    # Report a flagged modality if there is one (most confident first), else the most confident missing one.
    score = torch.where(flagged, confidence + 2.0, torch.where(missing, confidence, torch.full_like(confidence, -1.0)))
    pick = score.argmax(dim=1)  # (B,)
    any_missing = missing.any(dim=1)
    label_pair = torch.where(any_missing, label_without.gather(1, pick[:, None]).squeeze(1), -1)
    key_modality = torch.where(key_missing, pick, -1)
    return Check(label_full=label_full, label_pair=label_pair, key_missing=key_missing, key_modality=key_modality)
