"""Eq. 3: the full-modality network, trained first on complete records, then frozen.

Its own Eq. 1-2 encoders, slot embeddings and one Transformer encoder layer over the complete sequence,
pooled per modality (the representation that guides the students, Eq. 15) and a classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.heads import classifier
from emmr.nn.layout import Layout
from emmr.nn.modality_encoder import SequenceEncoder
from emmr.nn.slots import SlotEmbedding


class FullModalityNetwork(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layout = Layout(config)
        h = config.hidden
        self.encoder = SequenceEncoder(config)
        self.slots = SlotEmbedding(self.layout.total, h)
        self.context = nn.TransformerEncoderLayer(h, config.heads, config.ffn, config.dropout, batch_first=True)
        self.head = classifier(len(config.modalities) * h, h, config.num_classes, config.dropout)

    def forward(self, features: list[torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits (B, C), representation (B, M * h))."""
        masks = self.layout.masks(lengths)
        z = self.encoder(features, masks.observed)  # Eq. 1-2
        h = self.context(self.slots(z), src_key_padding_mask=~masks.observed)  # Eq. 3
        rep = self.layout.pool(h, masks.observed)
        return self.head(rep), rep
