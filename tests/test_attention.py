"""Fused attention (emmr/nn/attention.py) against torch's own attention, and length buckets (emmr/batch.py,
emmr/nn/layout.py, emmr/scorer.py) against scoring at every modality's max_len: the same results within float
rounding, with pre- and post-LayerNorm blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from emmr.batch import ModalityBatch, length_buckets
from emmr.config import ModelConfig, preset
from emmr.nn import attention
from emmr.nn.attention import FusedDecoderLayer, FusedEncoderLayer, attend
from emmr.nn.emmr import EMMR
from emmr.scorer import Scorer
from emmr.standardize import Standardizer
from emmr.tensors import model_inputs
from schemas.modality import ModalitySpec

CPU = torch.device("cpu")
# Small, but with every part of the paper preset: three modalities of different lengths, all members, the ensemble.
CONFIG = ModelConfig(modalities=(ModalitySpec("visual", 7, 12), ModalitySpec("acoustic", 5, 9),
                                 ModalitySpec("text", 6, 4)),
                     label_names=("neg", "neu", "pos"), hidden=16, heads=4, ffn=24, dropout=0.1, ae_dims=(12, 8, 4),
                     mmin_blocks=2)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def padding_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]  # True = padding


@pytest.mark.parametrize("cross", [False, True])
def test_attend_equals_multihead_attention_with_key_padding(cross):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    query = torch.randn(3, 5, 16)
    keys = torch.randn(3, 7, 16) if cross else query
    mask = padding_mask([7, 3, 1] if cross else [5, 2, 1], keys.shape[1])
    with torch.no_grad():
        want = mha(query, keys, keys, key_padding_mask=mask, need_weights=False)[0]
        got = attend(mha, query, keys, mask)
        with attention.reference():
            assert torch.equal(attend(mha, query, keys, mask), want)  # the reference is torch's own
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("norm_first", [True, False])
def test_fused_transformer_layers_equal_torch_s(norm_first):
    torch.manual_seed(1)
    kw = {"d_model": 16, "nhead": 4, "dim_feedforward": 24, "dropout": 0.1, "batch_first": True, "norm_first": norm_first}
    enc, dec = FusedEncoderLayer(**kw).eval(), FusedDecoderLayer(**kw).eval()
    ref_enc, ref_dec = nn.TransformerEncoderLayer(**kw).eval(), nn.TransformerDecoderLayer(**kw).eval()
    ref_enc.load_state_dict(enc.state_dict())  # the same parameters, by the same names (checkpoints load as before)
    ref_dec.load_state_dict(dec.state_dict())
    x, memory = torch.randn(3, 6, 16), torch.randn(3, 8, 16)
    x_mask, m_mask = padding_mask([6, 4, 1], 6), padding_mask([8, 5, 2], 8)
    with torch.no_grad():
        for fused_out, ref_out in ((enc(x, src_key_padding_mask=x_mask), ref_enc(x, src_key_padding_mask=x_mask)),
                                   (dec(x, memory, tgt_key_padding_mask=x_mask, memory_key_padding_mask=m_mask),
                                    ref_dec(x, memory, tgt_key_padding_mask=x_mask, memory_key_padding_mask=m_mask))):
            valid = ~x_mask  # torch's inference fast path may leave padded positions differently
            torch.testing.assert_close(fused_out[valid], ref_out[valid], **TOL)


def lengths_and_features(config: ModelConfig, n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random features zero beyond random lengths; about a third of the rows miss one modality."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.stack([torch.randint(1, m.max_len + 1, (n,), generator=g) for m in config.modalities], dim=1)
    missing = torch.randint(0, len(config.modalities), (n,), generator=g)
    drop = torch.rand(n, generator=g) < 0.35
    lengths[drop, missing[drop]] = 0
    feats = []
    for j, m in enumerate(config.modalities):
        x = torch.randn(n, m.max_len, m.dim, generator=g)
        feats.append(x * (torch.arange(m.max_len)[None, :, None] < lengths[:, j, None, None]))
    return feats, lengths


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("mode", ["flagged", "all"])
def test_the_model_with_fused_attention_equals_the_reference(norm_first, mode):
    torch.manual_seed(2)
    model = EMMR(CONFIG.with_(norm_first=norm_first)).eval()
    with torch.no_grad():
        model.flag_threshold.fill_(0.3)  # some rows flagged: the other members and the ensemble run too
    feats, lengths = lengths_and_features(CONFIG, 24, seed=3)
    with torch.no_grad():
        got = model(feats, lengths, mode=mode)
        with attention.reference():
            want = model(feats, lengths, mode=mode)
    assert bool(want.ensemble_used.any())
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    torch.testing.assert_close(got.without_logits, want.without_logits, **TOL)
    assert torch.equal(got.check.key_missing, want.check.key_missing)


@pytest.mark.parametrize("norm_first", [True, False])
def test_inference_computes_only_what_is_read_and_gives_what_it_gave(norm_first):
    """Mode "flagged" with fused attention skips the encoders of modalities no row has, encodes the reconstruction over
    the present modalities and decodes the missing slots only, and runs L_without_k for missing k (every k on flagged
    rows): the outputs are those of the full computation (attention.reference()), where they are computed."""
    torch.manual_seed(15)
    model = EMMR(CONFIG.with_(norm_first=norm_first)).eval()
    feats, lengths = lengths_and_features(CONFIG, 40, seed=16)
    with torch.no_grad(), attention.reference():
        scores = model(feats, lengths, mode="flagged").check.score
    incomplete = (lengths == 0).any(dim=1)
    with torch.no_grad():  # half of the rows that miss a modality flagged: the ensemble runs on some of them only
        middle = scores[incomplete].sort().values[incomplete.sum() // 2 - 1:][:2]
        model.flag_threshold.fill_(float(middle.mean()))  # between two rows' scores, not at one (float rounding)
    parts = [(feats, lengths)]
    for j in range(len(CONFIG.modalities)):  # a length bucket's batch: every row misses modality j
        rows = (lengths[:, j] == 0).nonzero().squeeze(1)
        parts.append(([f[rows] for f in feats], lengths[rows]))
    for part_feats, part_lengths in parts:
        with torch.no_grad():
            got = model(part_feats, part_lengths, mode="flagged")
            with attention.reference():
                want = model(part_feats, part_lengths, mode="flagged")
        flagged = want.check.key_missing
        if part_lengths is lengths:  # the whole batch has flagged rows and rows that miss a modality but are not
            assert bool(flagged.any()) and bool((~flagged & (part_lengths == 0).any(dim=1)).any())
        torch.testing.assert_close(got.logits, want.logits, **TOL)
        torch.testing.assert_close(got.check.score, want.check.score, **TOL)
        for field in ("key_missing", "key_modality", "label_full", "label_pair"):
            assert torch.equal(getattr(got.check, field), getattr(want.check, field)), field
        computed = (part_lengths == 0) | flagged[:, None]  # (B, M): the L_without_k computed
        torch.testing.assert_close(got.without_logits[computed], want.without_logits[computed], **TOL)
        assert not got.without_logits[~computed].any()


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoding_at_some_slots_equals_the_decoder_there(norm_first):
    torch.manual_seed(17)
    dec = FusedDecoderLayer(16, 4, 24, 0.1, batch_first=True, norm_first=norm_first).eval()
    x, memory = torch.randn(3, 9, 16), torch.randn(3, 5, 16)
    x_mask, m_mask = padding_mask([9, 6, 2], 9), padding_mask([5, 3, 1], 5)
    query = torch.tensor([0, 1, 4, 5, 8])
    with torch.no_grad():
        want = dec(x, memory, tgt_key_padding_mask=x_mask, memory_key_padding_mask=m_mask)[:, query]
        got = attention.decode_at(dec, x, memory, query, x_mask, m_mask)
    torch.testing.assert_close(got, want, **TOL)


def test_fused_attention_trains_as_the_reference():
    """Same gradients (dropout off), so training with the fused kernels learns what it learned before."""
    torch.manual_seed(4)
    model = EMMR(CONFIG.with_(dropout=0.0)).train()
    feats, lengths = lengths_and_features(CONFIG, 8, seed=5)
    grads = []
    for ref in (False, True):
        model.zero_grad()
        with attention.reference() if ref else torch.enable_grad():
            out = model(feats, lengths, mode="all")
            (out.logits.square().sum() + out.without_logits.square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------- length buckets


def test_length_buckets_group_alike_rows_and_keep_what_each_needs():
    lengths = np.array([[3, 0, 2], [12, 9, 4], [1, 1, 1], [5, 0, 4], [0, 2, 2], [2, 2, 2], [7, 9, 1]])
    buckets = length_buckets(lengths, (12, 9, 4), rows=2)
    assert sorted(np.concatenate([b.rows for b in buckets]).tolist()) == list(range(len(lengths)))  # each row once
    for b in buckets:
        assert len(b.rows) <= 2
        missing = (lengths[b.rows] == 0).any(axis=0)
        assert len({tuple(r) for r in (lengths[b.rows] == 0)}) == 1  # one pattern of missing modalities
        assert b.lens == tuple(int(n) for n in np.where(missing, (12, 9, 4), lengths[b.rows].max(axis=0)))
    complete = [b for b in buckets if (lengths[b.rows] > 0).all()]
    assert [b.rows.tolist() for b in complete] == [[2, 5], [1, 6]]  # the short ones together
    assert complete[0].lens == (2, 2, 2)  # a bucket of short records is computed short


def batch_of(config: ModelConfig, n: int, seed: int) -> ModalityBatch:
    feats, lengths = lengths_and_features(config, n, seed)
    names = config.modality_names
    return ModalityBatch(ids=np.array([f"r{i}" for i in range(n)], dtype=object),
                         features={m: f.numpy() for m, f in zip(names, feats)},
                         lengths={m: lengths[:, j].numpy().astype(np.int64) for j, m in enumerate(names)},
                         labels=np.full(n, -1, dtype=np.int64))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_scoring_in_length_buckets_equals_scoring_at_max_len(norm_first, rows):
    torch.manual_seed(6)
    model = EMMR(CONFIG.with_(norm_first=norm_first))
    with torch.no_grad():
        model.flag_threshold.fill_(0.3)
    batch = batch_of(CONFIG, 40, seed=7)
    scorer = Scorer(model, {"model_version": "test"}, CPU, bucket_rows=rows)
    got, want = scorer.score(batch), scorer.score(batch, trim=False)
    assert want.key_missing.any() and (~want.key_missing).any()
    np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.key_missing_score, want.key_missing_score, rtol=1e-5, atol=1e-6)
    for field in ("label_index", "key_missing", "key_modality", "label_full", "label_pair", "ensemble_used"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


def test_the_scorer_standardises_on_the_device_as_the_standardizer_does():
    torch.manual_seed(8)
    model = EMMR(CONFIG).eval()
    batch = batch_of(CONFIG, 30, seed=9)
    standardizer = Standardizer.fit(batch)
    scorer = Scorer(model, {"model_version": "test"}, CPU, standardizer=standardizer)
    feats, lengths = model_inputs(standardizer.apply(batch), CONFIG.modality_names, CPU)
    with torch.no_grad():
        want = model(feats, lengths, mode="flagged").logits.softmax(dim=-1).numpy()
    np.testing.assert_allclose(scorer.score(batch).probabilities, want, rtol=1e-5, atol=1e-6)


def test_a_modality_that_a_row_misses_cannot_be_trimmed():
    model = EMMR(CONFIG).eval()
    feats, lengths = lengths_and_features(CONFIG, 4, seed=10)
    lengths[:, 0] = torch.tensor([3, 0, 2, 1])  # row 1 misses the visual modality
    feats[0] = feats[0][:, :3]  # ... whose recovery needs all 12 of its slots
    with pytest.raises(ValueError, match="'visual' has 3 of its 12 steps.*a record misses it"), torch.no_grad():
        model(feats, lengths, mode="flagged")


def test_paper_preset_buckets_equal_max_len_scoring():
    """The paper preset itself (random weights), a few records of the synthetic length mix."""
    from emmr import synth
    from emmr.batch import from_arrow

    config = preset("paper")
    torch.manual_seed(11)
    model = EMMR(config)
    table = synth.generate(synth.SynthParams(records=6, seed=12, missing_rate=0.5), config.modalities, 0, 6)
    batch = from_arrow(table, config.modalities)
    scorer = Scorer(model, {"model_version": "test"}, CPU, bucket_rows=2)
    np.testing.assert_allclose(scorer.score(batch).probabilities, scorer.score(batch, trim=False).probabilities,
                               rtol=1e-5, atol=1e-6)


def test_layouts_cached_while_scoring_serve_training_afterwards():
    """Index tensors cached under torch.inference_mode would refuse autograd: a model scored, then trained."""
    torch.manual_seed(13)
    model = EMMR(CONFIG.with_(dropout=0.0))
    batch = batch_of(CONFIG, 10, seed=14)
    scorer = Scorer(model, {"model_version": "test"}, CPU, bucket_rows=3)
    scorer.score(batch)
    scorer.score(batch, trim=False)  # the full layout, as training uses it
    feats, lengths = lengths_and_features(CONFIG, 10, seed=14)
    model.train()
    out = model(feats, lengths, mode="all")
    out.logits.sum().backward()


def test_the_planner_keeps_small_models_in_one_call_and_splits_paper_size_ones():
    """A call costs milliseconds whatever its size: a small model scores a batch at once; a paper-size record costs
    more than a call, so its batch is cut into buckets of a few alike records (emmr/scorer.py, the cost model)."""
    small = Scorer(EMMR(preset("small")), {"model_version": "t"}, CPU)
    lengths = np.stack([np.random.default_rng(0).integers(0, m.max_len + 1, 256) for m in preset("small").modalities], 1)
    lengths[lengths.sum(axis=1) == 0, 0] = 1
    assert len(small.plan(lengths)) == 1
    paper_config = preset("paper")
    paper = Scorer(EMMR(paper_config), {"model_version": "t"}, CPU)
    rng = np.random.default_rng(1)
    lengths = np.stack([rng.integers(m.max_len // 2, m.max_len + 1, 64) for m in paper_config.modalities], 1)
    plan = paper.plan(lengths)
    assert 4 < len(plan) <= 64 and sorted(np.concatenate([b.rows for b in plan]).tolist()) == list(range(64))
    assert paper.plan_seconds(plan) < paper.plan_seconds(length_buckets(lengths, (100, 150, 25), 64))


def test_the_trimmed_layouts_kept_are_bounded(monkeypatch):
    """A long-running job meets many combinations of lengths: only the most recently used layouts are kept."""
    from emmr.nn import layout as layout_module

    monkeypatch.setattr(layout_module, "TRIMMED_CACHE", 5)
    model = EMMR(CONFIG)
    first = model.layout.trimmed((3, 4, 2))
    for n in range(1, 10):
        got = model.layout.trimmed((n, 9, 4))
        assert got.lens == (n, 9, 4) and len(got.index) == n + 13
    assert len(model.layout._trimmed) == 5
    again = model.layout.trimmed((3, 4, 2))  # evicted, made again the same
    assert again is not first and torch.equal(again.index, first.index)
