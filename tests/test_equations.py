"""Each equation of the paper against a hand-computed case on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emmr.config import ModelConfig
from emmr.nn.consistency import ConsistencyHeads, check
from emmr.nn.ensemble import MemberFusion, pair_evidence, switch
from emmr.nn.layout import Layout
from emmr.nn.losses import backward_loss, forward_loss, symmetric_kl, total_loss
from emmr.nn.modality_encoder import ModalityEncoder, SequenceEncoder
from emmr.nn.recovery import recover
from schemas import ModalitySpec

TINY = ModelConfig(modalities=(ModalitySpec("v", 2, 2), ModalitySpec("a", 3, 1), ModalitySpec("t", 2, 3)),
                   hidden=4, heads=1, ffn=8, dropout=0.0, ae_dims=(3, 2), mmin_blocks=2, mmin_dims=(3, 2))


def test_eq1_projection_attention_layernorm_by_hand():
    enc = ModalityEncoder(dim=2, hidden=2, heads=1, dropout=0.0).eval()
    with torch.no_grad():
        enc.project.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # W_m, no bias
        enc.attention.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        enc.attention.in_proj_bias.zero_()
        enc.attention.out_proj.weight.copy_(torch.eye(2))
        enc.attention.out_proj.bias.zero_()
    x = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])  # (1, 2 steps, 2)
    valid = torch.tensor([[True, False]])  # one real step, one padding
    z = enc(x, valid)
    # one valid key: attention returns its value, p = x W^T = (1, 2); Z = LayerNorm(p + p) = LayerNorm((2, 4))
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
    heads = ConsistencyHeads(TINY).eval()
    with torch.no_grad():  # every ReLU active, so any input a head reads moves its output
        for m in heads.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.fill_(10.0)
    pooled = torch.randn(1, 12)
    full, without = heads(pooled)
    assert full.shape == (1, 3) and without.shape == (1, 3, 3)
    changed = pooled.clone()
    changed[0, 4:8] += 0.5  # change modality a (index 1) only
    full2, without2 = heads(changed)
    torch.testing.assert_close(without2[:, 1], without[:, 1])  # L_without_a ignores a
    assert not torch.allclose(without2[:, 0], without[:, 0]) and not torch.allclose(full2, full)


def test_check_fires_exactly_where_the_labels_differ():
    full = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    # L_without_k, for k = v, a, t: per row
    without = torch.tensor([
        [[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]],  # differs for a only
        [[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]],  # same, but a is present: no flag
        [[0, 5.0, 0], [0, 5.0, 0], [0, 5.0, 0]],  # agrees everywhere
        [[9.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]],  # two missing (v, a), both differ: v is more confident
        [[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]],  # nothing missing
    ])
    missing = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    c = check(full, without, missing)
    assert c.key_missing.tolist() == [True, False, False, True, False]
    assert c.key_modality.tolist() == [1, -1, -1, 0, -1]
    assert c.label_full.tolist() == [0, 0, 1, 2, 0]
    assert c.label_pair.tolist() == [1, 0, 1, 0, -1]


def test_eq10_eq11_pair_evidence_by_hand():
    without = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))  # softmax gives these back
    r = pair_evidence(without)
    conf = np.array([0.5, 0.9, 0.8])  # Eq. 10
    beta = conf / conf.sum()  # Eq. 11
    expected = np.concatenate([beta[0] * np.array([0.5, 0.5]), beta[1] * np.array([0.9, 0.1]), beta[2] * np.array([0.2, 0.8])])
    np.testing.assert_allclose(r[0].numpy(), expected, rtol=1e-5)


def test_eq12_attention_fusion_by_hand():
    fusion = MemberFusion(dim=2, fusion="attention")
    with torch.no_grad():  # score_j = v^T tanh(W R_j + b) with W = I, b = 0, v = (1, 0)... (dim // 2 = 1 unit)
        fusion.score[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        fusion.score[0].bias.zero_()
        fusion.score[2].weight.copy_(torch.tensor([[2.0]]))
    reps = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 3.0]]])  # J = 3 members
    fused, alpha = fusion(reps)
    s = np.array([2 * math.tanh(1.0), 0.0, 2 * math.tanh(-1.0)])
    a = np.exp(s) / np.exp(s).sum()
    np.testing.assert_allclose(alpha[0].detach().numpy(), a, rtol=1e-5)
    np.testing.assert_allclose(fused[0].detach().numpy(), (a[:, None] * reps[0].numpy()).sum(0), rtol=1e-5)
    assert MemberFusion(2, "max")(reps)[0].tolist() == [[1.0, 3.0]]
    torch.testing.assert_close(MemberFusion(2, "average")(reps)[0], torch.tensor([[0.0, 4.0 / 3]]))


def test_eq13_switch_per_sample():
    ens, full = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    out = switch(torch.tensor([True, False]), ens, full)
    assert out.tolist() == [[1.0, 0.0], [0.0, 2.0]]


def test_symmetric_kl_by_hand():
    p, q = np.array([0.7, 0.3]), np.array([0.4, 0.6])
    expected = np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))
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
    torch.testing.assert_close(backward_loss([decoded], target, valid), expected)
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), 0.1, 0.1).item() == pytest.approx(1.5)
