"""Eq. 14-18: the training objective.

Eq. 14:  L = L_task + lambda_f L_forward + lambda_b L_backward   (lambda_f = lambda_b = 0.1 in the paper)
Eq. 15-16 (forward): the frozen full-modality network's representation of the *complete* record guides each
         member's representation of the recovered record: symmetric KL between their softmaxes.
Eq. 17-18 (backward): each member's decoder output reconstructs the complete record's features (Eq. 1-2 of
         the complete record, held fixed as the target): symmetric KL per slot, over the complete record's
         steps. (The authors' code compares the decoder output with the *masked* input instead.)
L_task:  cross-entropy of the Eq. 13 output, plus cross-entropy of the heads that feed the check and the
         ensemble (L_full, every L_without_k, the ensemble head on every row), weighted by `aux_weight`;
         the paper trains these heads but does not spell out their loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p) between softmax(p) and softmax(q) over the last dim; shape of the rest."""
    log_p, log_q = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def forward_loss(teacher_rep: torch.Tensor, member_reps: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Eq. 15-16: teacher_rep (B, D), member reps J x (B, D), rows (B,) bool (complete originals) -> scalar.

    Summed over members: each member has its own loss, of the same weight as when it trains alone.
    """
    return torch.stack([_masked_mean(symmetric_kl(teacher_rep, r), rows) for r in member_reps]).sum()


def backward_loss(decoded: list[torch.Tensor], target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 17-18: decoded J x (B, T, h), target (B, T, h), valid (B, T) bool -> scalar, summed over members."""
    return torch.stack([_masked_mean(symmetric_kl(d, target), valid) for d in decoded]).sum()


def task_loss(out, labels: torch.Tensor, aux_weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """L_task from an EMMROutput and labels (B,); every cross-entropy with `label_smoothing`."""
    def ce(logits, target):
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    loss = ce(out.logits, labels)
    aux = ce(out.full_logits, labels)
    aux = aux + ce(out.without_logits.flatten(0, 1), labels.repeat_interleave(out.without_logits.shape[1]))
    if out.ensemble_logits is not None:
        aux = aux + ce(out.ensemble_logits, labels)
    return loss + aux_weight * aux


def total_loss(task: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor, lambda_f: float, lambda_b: float) -> torch.Tensor:
    """Eq. 14."""
    return task + lambda_f * forward + lambda_b * backward
