"""Eq. 1-2: per-modality projection and multi-head self-attention, then concatenation along time.

Eq. 1:  P_m = X_m W_m (no bias);  Z_m = LayerNorm(P_m + MHA(P_m, P_m, P_m; key padding mask of m))
        or, with `norm_first` (the default, docs/model.md), Z_m = P_m + MHA(LN(P_m), LN(P_m), LN(P_m); mask)
Eq. 2:  Z = [Z_v; Z_a; Z_t] along time, (B, T, h); padded and missing steps are zero.
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.attention import attend


class ModalityEncoder(nn.Module):
    """Eq. 1 for one modality."""

    def __init__(self, dim: int, hidden: int, heads: int, dropout: float, norm_first: bool = True):
        super().__init__()
        self.project = nn.Linear(dim, hidden, bias=False)  # W_m
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), valid (B, L) -> (B, L, h), zero where not valid."""
        p = self.project(x * valid[..., None].to(x.dtype))  # (B, L, h); nothing leaks from padding
        # A row with no valid step (missing modality) would attend to nothing and give NaN: let it attend to
        # its (zero) steps and zero the result afterwards.
        key_padding = ~valid & valid.any(dim=1, keepdim=True)
        q = self.norm(p) if self.norm_first else p
        a = attend(self.attention, q, q, key_padding)  # fused (emmr/nn/attention.py)
        z = p + a if self.norm_first else self.norm(p + a)
        return z * valid[..., None].to(p.dtype)


class SequenceEncoder(nn.Module):
    """Eq. 1 for every modality, then Eq. 2."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.encoders = nn.ModuleList(
            ModalityEncoder(m.dim, config.hidden, config.heads, config.dropout, config.norm_first)
            for m in config.modalities
        )

    def forward(self, features: list[torch.Tensor], observed: torch.Tensor,
                absent: list[bool] | None = None) -> torch.Tensor:
        """features: per modality (B, L_m, d_m); observed (B, T) -> Z (B, T, h). absent[m] True: no row of the batch
        has modality m, whose Z is then zeros without computing it (Eq. 1 zeroes every step that is not observed)."""
        out, start = [], 0
        for j, (enc, x) in enumerate(zip(self.encoders, features)):
            n = x.shape[1]
            out.append(None if absent and absent[j] else enc(x, observed[:, start : start + n]))
            start += n
        done = next((z for z in out if z is not None), None)
        if done is None:  # nothing to copy the dtype from (no row has any modality): computed as they are
            return self.forward(features, observed)
        out = [z if z is not None else done.new_zeros(len(x), x.shape[1], done.shape[2])
               for z, x in zip(out, features)]
        return torch.cat(out, dim=1)  # Eq. 2
