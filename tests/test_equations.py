"""Each equation of the paper against a hand-computed case on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emmr.config import ModelConfig
from emmr.nn.consistency import ConsistencyHeads, check
from emmr.nn.ensemble import Ensemble, MemberFusion, pair_evidence, switch
from emmr.nn.heads import AttentionHead
from emmr.nn.members.mmin import MMINMember
from emmr.nn.layout import Layout
from emmr.nn.losses import backward_loss, forward_loss, symmetric_kl, total_loss
from emmr.nn.modality_encoder import ModalityEncoder, SequenceEncoder
from emmr.nn.recovery import recover
from schemas import ModalitySpec

TINY = ModelConfig(modalities=(ModalitySpec("v", 2, 2), ModalitySpec("a", 3, 1), ModalitySpec("t", 2, 3)),
                   hidden=4, heads=1, ffn=8, dropout=0.0, ae_dims=(3, 2), mmin_blocks=2)


@pytest.mark.parametrize("norm_first", [False, True])
def test_eq1_projection_attention_layernorm_by_hand(norm_first):
    enc = ModalityEncoder(dim=2, hidden=2, heads=1, dropout=0.0, norm_first=norm_first).eval()
    with torch.no_grad():
        enc.project.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # W_m, no bias
        enc.attention.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        enc.attention.in_proj_bias.zero_()
        enc.attention.out_proj.weight.copy_(torch.eye(2))
        enc.attention.out_proj.bias.zero_()
    x = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])  # (1, 2 steps, 2)
    valid = torch.tensor([[True, False]])  # one real step, one padding
    z = enc(x, valid)
    # one valid key: attention returns its value; p = x W^T = (1, 2)
    if norm_first:  # Z = p + MHA(LN(p)) = p + LN(p), LN((1, 2)) = (-0.5, 0.5) / sqrt(0.25 + eps)
        expected = torch.tensor([1 - 0.5 / math.sqrt(0.25 + 1e-5), 2 + 0.5 / math.sqrt(0.25 + 1e-5)])
    else:  # the paper's Eq. 1: Z = LayerNorm(p + p) = LayerNorm((2, 4))
        expected = torch.tensor([(2 - 3) / math.sqrt(1 + 1e-5), (4 - 3) / math.sqrt(1 + 1e-5)])
    torch.testing.assert_close(z[0, 0], expected)
    assert z[0, 1].abs().sum() == 0  # padding is zero
    # the padded step's value does not leak into the valid one
    torch.testing.assert_close(enc(torch.tensor([[[1.0, 1.0], [99.0, -5.0]]]), valid), z)


def test_eq1_missing_modality_is_zero_not_nan():
    enc = ModalityEncoder(dim=2, hidden=4, heads=2, dropout=0.0).eval()
    z = enc(torch.randn(3, 2, 2), torch.tensor([[True, True], [False, False], [True, False]]))
    assert torch.isfinite(z).all() and z[1].abs().sum() == 0


def test_eq2_concatenation_follows_the_layout():
    enc = SequenceEncoder(TINY).eval()
    layout = Layout(TINY)
    assert layout.segment.tolist() == [0, 0, 1, 2, 2, 2] and layout.step.tolist() == [0, 1, 0, 0, 1, 2]
    masks = layout.masks(torch.tensor([[2, 1, 0], [1, 0, 3]]))
    assert masks.observed.tolist() == [[1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 1, 1]]
    assert masks.missing_slots.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]]
    feats = [torch.randn(2, 2, 2), torch.randn(2, 1, 3), torch.randn(2, 3, 2)]
    z = enc(feats, masks.observed)
    assert z.shape == (2, 6, 4)
    torch.testing.assert_close(z[:, 0:2], enc.encoders[0](feats[0], masks.observed[:, 0:2]))
    torch.testing.assert_close(z[:, 3:6], enc.encoders[2](feats[2], masks.observed[:, 3:6]))


def test_pooling_is_a_masked_mean_per_modality():
    layout = Layout(TINY)
    z = torch.arange(6, dtype=torch.float32).repeat(4, 1).T[None]  # slot s holds the value s in every feature
    valid = torch.tensor([[True, False, True, True, True, False]])
    pooled = layout.pool(z, valid)  # (1, 3 * 4)
    assert pooled.view(3, 4)[:, 0].tolist() == [0.0, 2.0, 3.5]


def test_recovery_replaces_only_the_missing_segment():
    z = torch.zeros(2, 6, 4)
    decoded = torch.ones(2, 6, 4)
    masks = Layout(TINY).masks(torch.tensor([[2, 0, 3], [2, 1, 3]]))
    out = recover(z, decoded, masks.missing_slots)
    assert out[0, :, 0].tolist() == [0, 0, 1, 0, 0, 0]  # slot 2 (modality a) recovered, nothing else
    assert out[1].abs().sum() == 0  # nothing missing, nothing replaced


def test_eq8_eq9_heads_read_the_right_modalities():
    torch.manual_seed(0)
    layout = Layout(TINY).full()
    heads = ConsistencyHeads(TINY).eval()
    x = torch.randn(1, layout.total, 4)
    valid = torch.ones(1, layout.total, dtype=torch.bool)
    full, without = heads.forward_full(x, valid, layout), heads.forward_without(x, valid, layout)
    assert full.shape == (1, 3) and without.shape == (1, 3, 3)
    changed = x.clone()
    changed[0, 2] += 0.5  # change modality a (slot 2) only
    full2, without2 = heads.forward_full(changed, valid, layout), heads.forward_without(changed, valid, layout)
    torch.testing.assert_close(without2[:, 1], without[:, 1])  # L_without_a never reads a
    assert not torch.allclose(without2[:, 0], without[:, 0]) and not torch.allclose(full2, full)


def test_attention_head_is_fc_of_mha_pooled_per_modality_by_hand():
    """Eq. 8-9 FC(MHA(I)): with identity projections and one valid step per modality, attention mixes the
    steps by softmax(q.k) weights; the head pools per modality and applies the classifier."""
    head = AttentionHead(2, hidden=2, heads=1, classes=2, dropout=0.0, norm_first=False).eval()
    with torch.no_grad():
        head.attention.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        head.attention.in_proj_bias.zero_()
        head.attention.out_proj.weight.copy_(torch.eye(2))
        head.attention.out_proj.bias.zero_()
        lin1, lin2 = head.classify[0], head.classify[3]
        lin1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))  # (first value of modality 0, last of 1)
        lin1.bias.fill_(5.0)  # keeps the ReLU open
        lin2.weight.copy_(torch.eye(2))
        lin2.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # slot 0 = modality 0, slot 1 = modality 1
    out = head(x, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0, 1]))
    q = x[0].numpy()
    w = np.exp(q @ q.T / math.sqrt(2))
    w /= w.sum(axis=1, keepdims=True)
    y = q + w @ q  # residual
    y = (y - y.mean(axis=1, keepdims=True)) / np.sqrt(y.var(axis=1, keepdims=True) + 1e-5)  # LayerNorm (post-LN)
    pooled = y.reshape(-1)  # one slot per modality: the mean is the slot
    np.testing.assert_allclose(out[0].detach().numpy(), [pooled[0] + 5.0, pooled[3] + 5.0], rtol=1e-5)


def test_check_scores_and_flags_by_hand():
    p_full = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]])
    # L_without_k for k = v, a, t, per row, as probabilities
    p_without = torch.tensor([
        [[0.8, 0.1, 0.1], [0.0, 1.0, 0.0], [0.8, 0.1, 0.1]],  # a missing: s_a = 1 - 0.2 = 0.8
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.1, 0.1]],  # v missing: s_v = 1 - 0.7 = 0.3
        [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],  # t missing: s_t = 1 - (0.05 + 0.4) = 0.55
        [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]],  # v, a missing: s_v = 0.8, s_a = 1 - 0.4 = 0.6 -> v
        [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]],  # nothing missing: score 0
    ])
    missing = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    full, without = torch.log(p_full), torch.log(p_without.clamp_min(1e-30))
    c = check(full, without, missing, threshold=0.6)
    torch.testing.assert_close(c.score, torch.tensor([0.8, 0.3, 0.55, 0.8, 0.0]))
    assert c.key_missing.tolist() == [True, False, False, True, False]
    assert c.key_modality.tolist() == [1, -1, -1, 0, -1]
    assert c.label_full.tolist() == [0, 0, 1, 2, 0]
    assert c.label_pair.tolist() == [1, 0, 0, 0, -1]
    assert check(full, without, missing, threshold=0.5).key_missing.tolist() == [True, False, True, True, False]


def test_eq10_eq11_pair_evidence_by_hand():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    without = torch.log(torch.tensor(probs[None]))  # softmax gives these back
    e = pair_evidence(without)
    conf = probs.max(axis=1)  # Eq. 10: c_k
    beta = np.exp(conf) / np.exp(conf).sum()  # Eq. 10: softmax over the pairs
    expected = (beta[:, None] * np.log(probs)).sum(axis=0)  # Eq. 11: weighted logits
    np.testing.assert_allclose(e[0].numpy(), expected, rtol=1e-5)


def test_eq12_attention_fusion_by_hand():
    fusion = MemberFusion(dim=2, fusion="attention")
    with torch.no_grad():  # score_j = v^T tanh(W V_j + b) with W = [[1, 0], [0, 0]], b = 0, v = (2, 0)
        fusion.score[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        fusion.score[0].bias.zero_()
        fusion.score[2].weight.copy_(torch.tensor([[2.0, 0.0]]))
    votes = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 3.0]]])  # J = 3 members
    fused, alpha = fusion(votes)
    s = np.array([2 * math.tanh(1.0), 0.0, 2 * math.tanh(-1.0)])
    a = np.exp(s) / np.exp(s).sum()
    np.testing.assert_allclose(alpha[0].detach().numpy(), a, rtol=1e-5)
    np.testing.assert_allclose(fused[0].detach().numpy(), (a[:, None] * votes[0].numpy()).sum(0), rtol=1e-5)
    assert MemberFusion(2, "max")(votes)[0].tolist() == [[1.0, 3.0]]
    torch.testing.assert_close(MemberFusion(2, "average")(votes)[0], torch.tensor([[0.0, 4.0 / 3]]))


def test_eq13_ensemble_starts_as_the_fused_full_logits():
    ens = Ensemble(TINY.with_(fusion="average"))
    full = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])]
    without = torch.randn(1, 3, 3)
    votes = torch.stack([Ensemble.vote(f, without) for f in full], dim=1)
    torch.testing.assert_close(ens(votes), torch.tensor([[2.0, 2.0, 2.0]]))


def test_mmin_cascade_reconstruction_and_representation_by_hand():
    """Eq. 6 after Zhao et al.: block k reads x_0 + sum of earlier outputs; D = x_0 + sum of every output;
    E = W_p [latents]."""
    member = MMINMember(TINY).eval()
    x0 = torch.randn(2, 6, 4)
    d, latents = member.cascade(x0)
    x, outs = x0, []
    for enc, dec in zip(member.encoders, member.decoders):
        lat = enc(x)
        outs.append(dec(lat))
        x = x0 + sum(outs)
        torch.testing.assert_close(lat, latents[len(outs) - 1])
    torch.testing.assert_close(d, x0 + sum(outs))
    assert len(latents) == TINY.mmin_blocks and latents[0].shape[-1] == TINY.ae_dims[-1]  # the AE's layer sizes


def test_eq13_switch_per_sample():
    ens, full = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    out = switch(torch.tensor([True, False]), ens, full)
    assert out.tolist() == [[1.0, 0.0], [0.0, 2.0]]


def test_symmetric_kl_by_hand():
    p, q = np.array([0.7, 0.3]), np.array([0.4, 0.6])
    expected = 0.5 * (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))  # Eq. 16 / 18
    got = symmetric_kl(torch.log(torch.tensor(p)), torch.log(torch.tensor(q)))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert symmetric_kl(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_eq15_to_eq18_masked_means_and_eq14():
    teacher = torch.log(torch.tensor([[0.7, 0.3], [0.5, 0.5]]))
    member = torch.log(torch.tensor([[0.4, 0.6], [0.1, 0.9]]))
    rows = torch.tensor([True, False])  # only complete originals count
    expected = symmetric_kl(teacher[0], member[0])
    torch.testing.assert_close(forward_loss(teacher, [member, member], rows), 2 * expected)  # summed over members
    decoded = torch.zeros(1, 3, 2)
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    valid = torch.tensor([[True, True, False]])
    expected = (symmetric_kl(decoded[0, 0], target[0, 0]) + symmetric_kl(decoded[0, 1], target[0, 1])) / 2
    torch.testing.assert_close(backward_loss([decoded], [target], valid), expected)
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), 0.1, 0.1).item() == pytest.approx(1.5)


def test_attention_head_pre_ln_keeps_the_residual_unnormalised():
    """norm_first: y = x + MHA(LN(x)); with the attention's output projection zero, y = x exactly."""
    head = AttentionHead(2, hidden=2, heads=1, classes=2, dropout=0.0, norm_first=True).eval()
    with torch.no_grad():
        head.attention.out_proj.weight.zero_()
        head.attention.out_proj.bias.zero_()
    x = torch.tensor([[[3.0, -1.0], [10.0, 20.0]]])
    pooled = []
    head.classify.register_forward_hook(lambda m, i, o: pooled.append(i[0]))
    head(x, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0, 1]))
    torch.testing.assert_close(pooled[0], x.reshape(1, -1))  # the step magnitudes reach the classifier
