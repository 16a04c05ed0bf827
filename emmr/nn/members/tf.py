"""Eq. 7: the TF member, a one-layer Transformer encoder and decoder (FFN width 1200 in the paper).

reconstruct: the encoder reads the observed slots; the decoder's queries are every slot that counts after
recovery (observed and missing) and cross-attend to the encoder output; the decoded missing slots are the
reconstruction. represent: the same encoder over the recovered full input, every slot valid (F).
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.attention import FusedDecoderLayer, FusedEncoderLayer, decode_at
from emmr.nn.layout import Masks


class TransformerMember(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden
        self.encoder = FusedEncoderLayer(h, config.heads, config.ffn, config.dropout, batch_first=True,
                                          norm_first=config.norm_first)
        self.decoder = FusedDecoderLayer(h, config.heads, config.ffn, config.dropout, batch_first=True,
                                          norm_first=config.norm_first)

    def reconstruct(self, z_in: torch.Tensor, z: torch.Tensor, masks: Masks) -> torch.Tensor:
        """(B, T, h) -> (B, T, h)."""
        memory = self.encoder(z_in, src_key_padding_mask=~masks.observed)  # (B, T, h)
        return self.decoder(z_in, memory, tgt_key_padding_mask=~masks.recovered_valid,
                            memory_key_padding_mask=~masks.observed)

    def reconstruct_at(self, z_in: torch.Tensor, masks: Masks, keep: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """reconstruct(z_in, ...)[:, query] for inference, computing only what that needs: the encoder over the slots
        `keep` (those of the modalities some row has: the others are masked keys, so their encodings are never read)
        and the decoder at the slots `query` (the missing ones: recovery reads nothing else). -> (B, len(query), h)."""
        observed = masks.observed[:, keep]
        memory = self.encoder(z_in[:, keep], src_key_padding_mask=~observed)
        return decode_at(self.decoder, z_in, memory, query, ~masks.recovered_valid, ~observed)

    def represent(self, r_in: torch.Tensor, r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, h) -> F (B, T, h)."""
        return self.encoder(r_in, src_key_padding_mask=~valid)
