"""Eq. 14-18: the training objective.

Eq. 14:  L = L_task + lambda_f L_forward + lambda_b L_backward   (lambda_f = lambda_b = 0.1 in the paper)
Eq. 15-16 (forward): the frozen full-modality network's representation of the *complete* record guides each
         member's representation of the recovered record (its encoding F, pooled per modality):
         1/2 (KL(p || q) + KL(q || p)) between their softmaxes.
Eq. 17-18 (backward): each member's decoder output reconstructs the complete record's features (Eq. 1-2 of
         the complete record, computed without dropout and held fixed as the target): the same symmetric KL per
         slot, over the complete record's steps. (The authors' code compares the decoder output with the
         *masked* input instead.)
L_task:  cross-entropy of each member's L_full (Eq. 8) against the label, of its L_without_k (Eq. 9) against the
         label with k neutralised (emmr/keytruth.py), weighted by `aux_weight`, and of the ensemble (Eq. 13)
         against the label on the records that miss a modality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 16/18: 1/2 (KL(p || q) + KL(q || p)) between softmax(p) and softmax(q) over the last dim."""
    log_p, log_q = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def forward_loss(teacher_rep: torch.Tensor, member_reps: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Eq. 15-16: teacher_rep (B, D), member reps J x (B, D), rows (B,) bool (complete originals) -> scalar,
    summed over members (each member has its own loss)."""
    return torch.stack([_masked_mean(symmetric_kl(teacher_rep, r), rows) for r in member_reps]).sum()


def backward_loss(decoded: list[torch.Tensor], targets: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """Eq. 17-18: decoded J x (B, T, h), targets J x (B, T, h) (each member's Eq. 1-2 of the complete record),
    valid (B, T) bool -> scalar, summed over members."""
    return torch.stack([_masked_mean(symmetric_kl(d, t), valid) for d, t in zip(decoded, targets, strict=True)]).sum()


def heads_loss(full_logits: torch.Tensor, without_logits: torch.Tensor, labels: torch.Tensor,
               labels_without: torch.Tensor, aux_weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """One member's heads: CE(L_full, y) + aux_weight * mean_k CE(L_without_k, y_without_k), each with
    `label_smoothing`.

    full (B, C), without (B, M, C), labels (B,); labels_without (B, M) labels (-100: none), or (B, M, C)
    probabilities (all zero: none)."""
    pairs = F.cross_entropy(without_logits.flatten(0, 1), labels_without.flatten(0, 1), label_smoothing=label_smoothing)
    return F.cross_entropy(full_logits, labels, label_smoothing=label_smoothing) + aux_weight * pairs


def ensemble_loss(ensemble_logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """CE of the ensemble output (Eq. 13) on the rows that miss a modality (where it can be used)."""
    per_row = F.cross_entropy(ensemble_logits, labels, reduction="none", label_smoothing=label_smoothing)
    return _masked_mean(per_row, rows)


def total_loss(task: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor, lambda_f: float, lambda_b: float) -> torch.Tensor:
    """Eq. 14."""
    return task + lambda_f * forward + lambda_b * backward
