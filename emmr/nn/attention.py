"""Multi-head attention with key padding masks through `torch.nn.functional.scaled_dot_product_attention`: one fused
kernel (flash or memory-efficient attention on a GPU, the fused flash kernel on a CPU) instead of a matmul, a masked
softmax and another matmul with the (B, heads, T, T) weights in memory between them.

Every attention block of the model goes through here with the weights of its `nn.MultiheadAttention` (so
checkpoints are unchanged): the modality encoders (Eq. 1), the TF member's encoder and decoder layers (Eq. 7) and
the heads (Eq. 8-9). `FusedEncoderLayer` / `FusedDecoderLayer` are torch's Transformer layers (same parameters,
same arithmetic, pre- or post-LayerNorm) with their attention computed here; `decode_at` a decoder layer's output at
some slots only. `reference()` switches every block back to torch's own implementation, and the model's inference
back to computing every slot and head (emmr/nn/emmr.py `_infer`), for the tests that hold the two equal and for
benchmarks of the old path.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

_state = threading.local()


def fused() -> bool:
    """Whether attention runs through scaled_dot_product_attention (the default) in this thread."""
    return getattr(_state, "fused", True)


@contextlib.contextmanager
def reference():
    """Within this block, attention runs through torch's nn.MultiheadAttention / Transformer layers as before."""
    before = fused()
    _state.fused = False
    try:
        yield
    finally:
        _state.fused = before


def attend(mha: nn.MultiheadAttention, query: torch.Tensor, key_value: torch.Tensor,
           key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """mha(query, key_value, key_value) with keys masked where key_padding_mask is True: (B, Tq, h), (B, Tk, h),
    (B, Tk) bool -> (B, Tq, h). Every row must keep at least one key (an all-masked row would be NaN)."""
    if not fused():
        return mha(query, key_value, key_value, key_padding_mask=key_padding_mask, need_weights=False)[0]
    b, tq, h = query.shape
    heads = mha.num_heads
    d = h // heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    if query is key_value:  # self-attention: one projection for q, k and v
        q, k, v = F.linear(query, w, bias).view(b, tq, 3, heads, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
    else:
        tk = key_value.shape[1]
        q = F.linear(query, w[:h], None if bias is None else bias[:h]).view(b, tq, heads, d).transpose(1, 2)
        k, v = F.linear(key_value, w[h:], None if bias is None else bias[h:]).view(b, tk, 2, heads, d).permute(
            2, 0, 3, 1, 4)  # 2 x (B, H, Tk, d)
    mask = None
    if key_padding_mask is not None:  # additive, in q's dtype: -inf where a key is padding
        mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            key_padding_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, Tk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0)
    return mha.out_proj(out.transpose(1, 2).reshape(b, tq, h))  # (B, Tq, h)


class FusedEncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer (batch_first) with its self-attention through `attend`."""

    def forward(self, src: torch.Tensor, src_mask=None, src_key_padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if not fused() or src_mask is not None or is_causal:
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        x = src
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.dropout1(attend(self.self_attn, y, y, src_key_padding_mask))
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self.dropout1(attend(self.self_attn, x, x, src_key_padding_mask)))
            x = self.norm2(x + self._ff_block(x))
        return x


class FusedDecoderLayer(nn.TransformerDecoderLayer):
    """nn.TransformerDecoderLayer (batch_first) with its self- and cross-attention through `attend`."""

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, tgt_mask=None, memory_mask=None,
                tgt_key_padding_mask: torch.Tensor | None = None, memory_key_padding_mask: torch.Tensor | None = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> torch.Tensor:
        if not fused() or tgt_mask is not None or memory_mask is not None or tgt_is_causal or memory_is_causal:
            return super().forward(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask,
                                   tgt_is_causal, memory_is_causal)
        x = tgt
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.dropout1(attend(self.self_attn, y, y, tgt_key_padding_mask))
            x = x + self.dropout2(attend(self.multihead_attn, self.norm2(x), memory, memory_key_padding_mask))
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self.dropout1(attend(self.self_attn, x, x, tgt_key_padding_mask)))
            x = self.norm2(x + self.dropout2(attend(self.multihead_attn, x, memory, memory_key_padding_mask)))
            x = self.norm3(x + self._ff_block(x))
        return x


def decode_at(layer: nn.TransformerDecoderLayer, tgt: torch.Tensor, memory: torch.Tensor, query: torch.Tensor,
              tgt_key_padding_mask: torch.Tensor | None, memory_key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """layer(tgt, memory, ...)[:, query] (inference, fused attention) computing only the slots `query` (Tq,): every slot
    of tgt is still a key of the self-attention, but the queries, the cross-attention and the feed-forward block run
    at the asked slots only (a slot's output depends on its own query and on every key). (B, T, h), (B, Tm, h) ->
    (B, Tq, h)."""
    t = tgt[:, query]
    if layer.norm_first:
        y = layer.norm1(tgt)
        x = t + layer.dropout1(attend(layer.self_attn, y[:, query], y, tgt_key_padding_mask))
        x = x + layer.dropout2(attend(layer.multihead_attn, layer.norm2(x), memory, memory_key_padding_mask))
        return x + layer._ff_block(layer.norm3(x))
    x = layer.norm1(t + layer.dropout1(attend(layer.self_attn, t, tgt, tgt_key_padding_mask)))
    x = layer.norm2(x + layer.dropout2(attend(layer.multihead_attn, x, memory, memory_key_padding_mask)))
    return layer.norm3(x + layer._ff_block(x))
