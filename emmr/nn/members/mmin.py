"""Eq. 6: the MMIN member, a cascade of residual autoencoders (Zhao et al., 2021) whose latents are
concatenated and projected back to h.

Block k reads x_k = x_0 + sum_{i<k} out_i (the residual cascade) and gives (latent_k, out_k); the member's
decoded sequence is W_p [latent_1; ...; latent_K]. Per step, like the AE member, with the record context.
The last block's output would feed nothing, so the last block has an encoder only.
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
        pairs = [mlp_autoencoder(config.hidden, config.mmin_dims, config.dropout) for _ in range(config.mmin_blocks)]
        self.encoders = nn.ModuleList(e for e, _ in pairs)
        self.decoders = nn.ModuleList(d for _, d in pairs[:-1])
        self.project = nn.Linear(config.mmin_blocks * config.mmin_dims[-1], config.hidden)  # W_p

    def forward(self, z_in: torch.Tensor, z: torch.Tensor, masks: Masks) -> torch.Tensor:
        x0 = with_context(z_in, z, masks.observed)
        x, latents = x0, []
        for k, enc in enumerate(self.encoders):
            latent = enc(x)  # (B, T, l)
            latents.append(latent)
            if k < len(self.decoders):
                x = x + self.decoders[k](latent)  # residual cascade: x_{k+1} = x_0 + sum of outputs so far
        return self.project(torch.cat(latents, dim=-1))  # (B, T, h)
