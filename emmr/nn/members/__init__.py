"""The three encoder-decoder members (Eq. 5-7) and their registry.

Every member maps the concatenated sequence Z_in (B, T, h) (Eq. 2 plus slot embeddings; zeros at missing
slots) to a decoded sequence of the same shape, from which recovery takes the missing segment.
"""

from __future__ import annotations

from torch import nn

from emmr.config import ModelConfig
from emmr.nn.members.ae import AutoencoderMember
from emmr.nn.members.mmin import MMINMember
from emmr.nn.members.tf import TransformerMember

_REGISTRY = {"tf": TransformerMember, "ae": AutoencoderMember, "mmin": MMINMember}


def build_member(name: str, config: ModelConfig) -> nn.Module:
    try:
        return _REGISTRY[name](config)
    except KeyError:
        raise ValueError(f"unknown member {name!r}; choose from {sorted(_REGISTRY)}") from None
