"""The three encoder-decoder members (Eq. 5-7) and their registry.

Every member has two passes over the concatenated sequence (Eq. 2 plus slot embeddings):
- `reconstruct(z_in, z, masks)`: from the observed slots (zeros at missing ones) to a decoded sequence
  (B, T, h) in the space of Eq. 1-2, from which recovery takes the missing segment (Section 3.6) and which the
  backward loss compares with the complete record (Eq. 17-18);
- `represent(r_in, r, valid)`: the member's encoding of the *recovered* full input (B, T, h), which its full
  head classifies (Eq. 8, and Eq. 13's F): the member's own weights shape every prediction it makes, on complete
  records too.
"""

from __future__ import annotations

from torch import nn

from emmr.config import ModelConfig, member_kind
from emmr.nn.members.ae import AutoencoderMember
from emmr.nn.members.mmin import MMINMember
from emmr.nn.members.tf import TransformerMember

_REGISTRY = {"tf": TransformerMember, "ae": AutoencoderMember, "mmin": MMINMember}


def build_member(name: str, config: ModelConfig) -> nn.Module:
    try:
        return _REGISTRY[member_kind(name)](config)
    except KeyError:
        raise ValueError(f"unknown member {name!r}; choose from {sorted(_REGISTRY)}") from None
