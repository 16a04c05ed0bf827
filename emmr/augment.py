"""Input perturbations in training, against features that the training rows let a network memorise.

`feature_noise` adds Gaussian noise of that standard deviation (in standardised units when
`train.standardize` is on) and `feature_dropout` zeroes each feature value with that probability (inverted
dropout: the rest are scaled by 1 / (1 - p)), on observed steps only: padding and missing modalities stay
zero. Applied to the network's inputs in training only, never when scoring.
"""

from __future__ import annotations

import torch


def perturb(features: list[torch.Tensor], lengths: torch.Tensor, noise: float, dropout: float) -> list[torch.Tensor]:
    """features M x (B, L_m, d_m), lengths (B, M) -> perturbed copies (the same tensors when both are 0)."""
    if noise <= 0 and dropout <= 0:
        return features
    out = []
    for m, x in enumerate(features):
        observed = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, m:m + 1]).unsqueeze(-1)  # (B, L, 1)
        if noise > 0:
            x = x + noise * torch.randn_like(x)
        if dropout > 0:
            x = x * (torch.rand_like(x) >= dropout) / (1 - dropout)
        out.append(torch.where(observed, x, torch.zeros_like(x)))
    return out
