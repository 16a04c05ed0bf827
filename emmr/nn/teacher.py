"""Eq. 3: the full-modality network, trained first on complete records, then frozen.

Its own Eq. 1-2 encoders, slot embeddings and one Transformer encoder layer over the complete sequence,
pooled per modality (the representation that guides the students, Eq. 15) and a classifier.

It also defines what a *key* modality is (docs/model.md): modality k of a complete record is key when the
teacher's label changes once k is neutralised, i.e. k's part of its representation (the pooled output of the
Transformer layer at k's steps) replaced by `neutral[k]`, the mean of that part over the complete training
records (fitted once, after training, and kept with the weights).
"""

from __future__ import annotations

import torch
from torch import nn

from emmr.config import ModelConfig
from emmr.nn.attention import FusedEncoderLayer
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
        self.context = FusedEncoderLayer(h, config.heads, config.ffn, config.dropout, batch_first=True,
                                          norm_first=config.norm_first)
        self.head = classifier(len(config.modalities) * h, h, config.num_classes, config.dropout)
        self.register_buffer("neutral", torch.zeros(len(config.modalities), h))  # (M, h)

    def classify(self, z: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3 after Eq. 1-2: z (B, T, h) -> (logits (B, C), representation (B, M * h))."""
        h = self.context(self.slots(z), src_key_padding_mask=~observed)
        rep = self.layout.pool(h, observed)
        return self.head(rep), rep

    def forward(self, features: list[torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits (B, C), representation (B, M * h))."""
        masks = self.layout.masks(lengths)
        return self.classify(self.encoder(features, masks.observed), masks.observed)

    def neutralised_logits(self, features: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """Complete records -> (B, M, C): the teacher's logits with each modality k in turn neutralised."""
        _, rep = self(features, lengths)
        parts = rep.view(len(rep), len(self.neutral), -1)  # (B, M, h)
        out = []
        for k in range(len(self.neutral)):
            neutralised = parts.clone()
            neutralised[:, k] = self.neutral[k]
            out.append(self.head(neutralised.flatten(1)))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def fit_neutral(self, batches) -> None:
        """neutral[k] = mean of modality k's part of the representation over `batches` (complete records), an
        iterable of (features, lengths)."""
        total, count = torch.zeros_like(self.neutral, dtype=torch.float64), 0
        for features, lengths in batches:
            rep = self(features, lengths)[1]
            total += rep.view(len(rep), len(self.neutral), -1).double().sum(dim=0)
            count += len(rep)
        self.neutral.copy_((total / max(count, 1)).to(self.neutral.dtype))
