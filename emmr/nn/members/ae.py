"""Eq. 5: the AE member, a per-step fully connected autoencoder h-256-128-64-128-256-h (paper sizes).

Both passes are the autoencoder step by step, with the record context (members/context.py): over the observed
slots it reconstructs the record; over the recovered input its output is the member's representation.
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.layout import Masks
from emmr.nn.members.context import with_context


def mlp_autoencoder(hidden: int, dims: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, nn.Sequential]:
    """(encoder h -> dims[-1], decoder dims[-1] -> h), ReLU between layers, linear output."""
    sizes = (hidden, *dims)
    enc, dec = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        enc += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    back = sizes[::-1]
    for i, (a, b) in enumerate(zip(back[:-1], back[1:])):
        dec += [nn.Linear(a, b)] + ([nn.ReLU(), nn.Dropout(dropout)] if i < len(back) - 2 else [])
    return nn.Sequential(*enc), nn.Sequential(*dec)


class AutoencoderMember(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.encoder, self.decoder = mlp_autoencoder(config.hidden, config.ae_dims, config.dropout)

    def reconstruct(self, z_in: torch.Tensor, z: torch.Tensor, masks: Masks) -> torch.Tensor:
        """(B, T, h) -> (B, T, h), step by step (Eq. 5)."""
        return self.decoder(self.encoder(with_context(z_in, z, masks.observed)))

    def represent(self, r_in: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(with_context(r_in, r, valid)))
