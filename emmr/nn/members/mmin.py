"""Eq. 6: the MMIN member, the cascade residual autoencoder of MMIN (Zhao, Li and Jin, ACL 2021), with the
same layer settings as the AE member (h-256-128-64-128-256-h per block in the paper).

Block k reads x_k = x_0 + sum_{i<k} out_i (x_0 the input, out_i block i's output) and gives (latent_k, out_k).
- reconstruct: D = x_0 + sum_k out_k, the imagined complete input (MMIN's reconstruction);
- represent: E^MMIN = W_p [latent_1; ...; latent_K] of the cascade over the recovered input, the joint
  representation MMIN classifies from, projected to h.
Per step, like the AE member, with the record context.
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.layout import Masks
from emmr.nn.members.ae import mlp_autoencoder
from emmr.nn.members.context import with_context


class MMINMember(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        pairs = [mlp_autoencoder(config.hidden, config.ae_dims, config.dropout) for _ in range(config.mmin_blocks)]
        self.encoders = nn.ModuleList(e for e, _ in pairs)
        self.decoders = nn.ModuleList(d for _, d in pairs)
        self.project = nn.Linear(config.mmin_blocks * config.ae_dims[-1], config.hidden)  # W_p

    def cascade(self, x0: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x0 (B, T, h) -> (D = x0 + sum of the blocks' outputs (B, T, h), latents K x (B, T, l))."""
        x, latents = x0, []
        for enc, dec in zip(self.encoders, self.decoders):
            latent = enc(x)  # (B, T, l)
            latents.append(latent)
            x = x + dec(latent)  # x_{k+1} = x_0 + sum of the outputs so far
        return x, latents

    def reconstruct(self, z_in: torch.Tensor, z: torch.Tensor, masks: Masks) -> torch.Tensor:
        return self.cascade(with_context(z_in, z, masks.observed))[0]

    def represent(self, r_in: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat(self.cascade(with_context(r_in, r, valid))[1], dim=-1))
