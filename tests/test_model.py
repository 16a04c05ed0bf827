"""The assembled model: gradients in each training stage, the frozen teacher and backbone, inference on flagged
rows only, members that shape their predictions, EMMR equal to TF alone where the check does not fire, the
paper preset."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from emmr import synth
from emmr import train as train_module
from emmr.batch import ModalityBatch, from_arrow
from emmr.config import preset
from emmr.methods import METHODS, apply_method
from emmr.missing import seeded_rng, simulate_missing
from emmr.nn.emmr import EMMR
from emmr.nn.teacher import FullModalityNetwork
from emmr.tensors import model_inputs
from emmr.train import StageData, TrainConfig, split_validation, stage_step, train_emmr, train_teacher

SMALL = preset("small")
CPU = torch.device("cpu")


def random_inputs(config, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(len(lengths), m.max_len, m.dim, generator=g) for m in config.modalities]
    return feats, torch.tensor(lengths)


@pytest.fixture(scope="module")
def tiny_data():
    table = synth.generate(synth.SynthParams(records=160, seed=4), SMALL.modalities)
    return split_validation(from_arrow(table, SMALL.modalities), 0.25, 0)


@pytest.fixture(scope="module")
def trained(tiny_data):
    """A quickly trained EMMR (two epochs per stage) and the data it saw."""
    tr, va = tiny_data
    cfg = TrainConfig(epochs=2, teacher_epochs=1, batch_size=16, missing_rate=0.5, ensemble_gate=False)
    teacher, best, _ = train_teacher(tr, va, SMALL, cfg, progress=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    return train_emmr(tr, va, SMALL, cfg, progress=False, teacher=(teacher, best)), before, cfg


PAPER_MEMBERS = SMALL.with_(members=("tf", "ae", "mmin"), member_encoders="shared")  # the paper's members, one Eq. 1-2


@pytest.mark.parametrize("method,base", [(m, SMALL) for m in sorted(METHODS)] + [("emmr", PAPER_MEMBERS)])
def test_every_trainable_parameter_gets_a_gradient_in_its_stage(method, base, tiny_data):
    """Stage 1 reaches every backbone parameter; stage 2 every other parameter (the members' own Eq. 1-2 with
    `member_encoders: own`, the small preset) and no backbone parameter."""
    tr, va = tiny_data
    config, cfg = apply_method(method, base, TrainConfig(missing_rate=0.5))
    torch.manual_seed(0)
    teacher = FullModalityNetwork(config).eval()
    data = StageData(tr, va, teacher, config, cfg)
    backbone = EMMR(config.backbone_only())  # stage 1 trains the single-member model
    models = [backbone]
    if config.ensemble:
        full = EMMR(config)
        full.load_state_dict(backbone.state_dict(), strict=False)
        full.freeze_backbone()
        models.append(full)
    idx = np.arange(32)
    for model in models:
        model.train()
        stage_step(model, data, cfg, epoch=0)(idx).backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable
        missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (model.backbone_frozen, missing)
        if model.backbone_frozen:
            assert all(p.grad is None for m in model.backbone_modules() for p in m.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("config", [PAPER_MEMBERS, PAPER_MEMBERS.with_(member_encoders="own"), SMALL],
                         ids=["paper-members", "paper-members-own-encoders", "small"])
def test_inference_runs_other_members_only_on_flagged_rows_and_matches_full_computation(config):
    torch.manual_seed(1)
    model = EMMR(config).eval()
    model.flag_threshold.fill_(0.6)
    lengths = [[8, 0, 6], [0, 3, 2], [8, 10, 0], [5, 5, 5], [3, 0, 0], [8, 10, 6]] * 5
    feats, lengths_t = random_inputs(config, lengths, seed=2)
    seen = []
    other = model.members[config.members[1]]
    original = other.represent
    other.represent = lambda r_in, r, valid: seen.append(len(r_in)) or original(r_in, r, valid)
    with torch.inference_mode():
        fast = model(feats, lengths_t, mode="flagged")
        slow = model(feats, lengths_t, mode="all")
    flagged = int(fast.check.key_missing.sum())
    assert seen == [flagged, len(lengths)]  # inference: only the flagged rows met the second member
    assert 0 < flagged < len(lengths), "the random model should flag some rows, not all"
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.check.score, slow.check.score, rtol=1e-4, atol=1e-5)
    complete = torch.tensor([all(x > 0 for x in row) for row in lengths])
    assert not fast.check.key_missing[complete].any() and (fast.check.score[complete] == 0).all()


@pytest.mark.parametrize("member", ["tf", "ae", "mmin"])
def test_a_members_weights_shape_complete_record_predictions(member):
    """Not inert on observed modalities: the full head classifies the member's encoding of the record."""
    torch.manual_seed(3)
    model = EMMR(SMALL.with_(members=(member,))).eval()
    feats, lengths = random_inputs(SMALL, [[8, 10, 6], [4, 3, 2]])
    with torch.inference_mode():
        before = model(feats, lengths).logits.clone()
        for p in model.members[member].parameters():
            p.add_(0.05 * torch.randn_like(p))
        after = model(feats, lengths).logits
    assert (after - before).abs().max() > 1e-4


def test_own_member_encoders_shape_flagged_rows_only():
    """`member_encoders: own`: the other members read their own Eq. 1-2, so their weights change the ensemble's
    output on flagged rows and nothing on the others; the backbone's encoder is not theirs."""
    torch.manual_seed(5)
    model = EMMR(PAPER_MEMBERS.with_(member_encoders="own")).eval()
    model.flag_threshold.fill_(0.6)
    assert set(model.member_encoders) == {"ae", "mmin"} and model.encoder_of("tf") is model.encoder
    feats, lengths = random_inputs(SMALL, [[8, 0, 6], [0, 3, 2], [8, 10, 0], [5, 5, 5], [3, 0, 0], [8, 10, 6]] * 5, 6)
    with torch.inference_mode():
        before = model(feats, lengths)
        for p in model.member_encoders["mmin"].parameters():
            p.add_(0.05 * torch.randn_like(p))
        after = model(feats, lengths)
    flagged = before.check.key_missing
    assert flagged.any() and (~flagged).any()
    assert (after.logits[flagged] - before.logits[flagged]).abs().max() > 1e-4
    torch.testing.assert_close(after.logits[~flagged], before.logits[~flagged], rtol=0, atol=0)


def test_members_of_one_kind_have_their_own_weights():
    """The small preset's members tf, tf#2, tf#3: three Transformer members, none sharing a weight."""
    assert SMALL.members == ("tf", "tf#2", "tf#3") and SMALL.member_encoders == "own"
    model = EMMR(SMALL)
    params = [{id(p) for p in model.members[n].parameters()} | {id(p) for p in model.encoder_of(n).parameters()}
              for n in SMALL.members]
    assert all(type(model.members[n]) is type(model.members["tf"]) for n in SMALL.members)
    assert all(not (a & b) for i, a in enumerate(params) for b in params[i + 1:])
    with pytest.raises(ValueError, match="suffix #N"):
        SMALL.with_(members=("tf", "tf2"))


def test_emmr_equals_tf_alone_wherever_the_check_does_not_fire(trained):
    """Never worse than TF where not flagged: exactly the backbone's output, the backbone's weights untouched."""
    result, _, _ = trained
    emmr, (tf, _) = result.model.eval(), result.backbone
    for name, v in tf.state_dict().items():
        torch.testing.assert_close(emmr.state_dict()[name], v, rtol=0, atol=0)
    table = synth.generate(synth.SynthParams(records=120, seed=9), SMALL.modalities)
    batch = from_arrow(table, SMALL.modalities)
    masked = batch.drop(simulate_missing(batch.present(), 0.6, seeded_rng(0, 1)))
    feats, lengths = model_inputs(masked, SMALL.modality_names, CPU)
    with torch.inference_mode():
        a, b = emmr(feats, lengths), tf.eval()(feats, lengths)
    torch.testing.assert_close(a.check.score, b.check.score, rtol=0, atol=0)
    keep = ~a.check.key_missing
    assert keep.any() and a.check.key_missing.any()
    torch.testing.assert_close(a.logits[keep], b.logits[keep], rtol=0, atol=0)
    assert a.ensemble_used.equal(a.check.key_missing) and not b.ensemble_used.any()


@pytest.mark.parametrize("margin,ll_margin,gate,kept", [(0.01, 0.0, True, True), (0.0, 0.01, True, False),
                                                        (-0.01, 0.01, True, False), (0.01, -0.01, True, False),
                                                        (-0.01, -0.01, False, True)])
def test_the_ensemble_is_kept_only_if_it_beats_the_backbone_on_validation(trained, tiny_data, monkeypatch, margin,
                                                                          ll_margin, gate, kept):
    """Stage 2's best validation scores against the backbone's: better on the select metric (a tie keeps the
    backbone) and no lower log-likelihood; else the backbone alone is the model (its predictions and flags).
    `ensemble_gate: false` keeps the ensemble whatever it scored."""
    result, _, cfg = trained
    base, base_best = result.backbone
    metric, ll = "macro_f1", "log_likelihood"
    stage2 = {**base_best, metric: base_best[metric] + margin, ll: base_best[ll] + ll_margin}
    monkeypatch.setattr(train_module, "train_ensemble", lambda model, data, cfg, progress: (stage2, []))
    tr, va = tiny_data
    out = train_emmr(tr, va, SMALL, replace(cfg, ensemble_gate=gate, select_metric=metric), progress=False,
                     teacher=(result.teacher, result.metrics["teacher_validation"]), backbone=result.backbone)
    assert out.metrics["ensemble"] == {"passed": margin > 0 and ll_margin >= 0, "kept": kept, "gate": gate,
                                       "metric": metric, "ensemble": {metric: stage2[metric], ll: stage2[ll]},
                                       "backbone": {metric: base_best[metric], ll: base_best[ll]}}
    assert (out.model is base) is not kept
    assert (out.model.ensemble is not None) is kept and out.model.config.members == (SMALL.members if kept else ("tf",))
    assert out.metrics["validation"] == (stage2 if kept else base_best)
    assert out.metrics["flag"] == base_best["flag"]


def test_an_ensemble_trained_for_no_epoch_is_not_kept():
    assert train_module.keep_ensemble({}, {}, "macro_f1") == {
        "passed": False, "metric": "macro_f1", "ensemble": {"macro_f1": None, "log_likelihood": None},
        "backbone": {"macro_f1": None, "log_likelihood": None}}  # no -inf: the checkpoint's JSON stays standard
    assert not train_module.keep_ensemble({}, {"macro_f1": 0.5, "log_likelihood": -1.0}, "macro_f1")["passed"]


def test_teacher_weights_do_not_change_and_its_neutral_values_are_fitted(trained, tiny_data):
    result, before, _ = trained
    teacher = result.teacher
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(not p.requires_grad for p in teacher.parameters())
    tr, _ = tiny_data
    complete = tr.take(np.flatnonzero(tr.present().all(axis=1)))
    feats, lengths = model_inputs(complete, SMALL.modality_names, CPU)
    with torch.no_grad():
        rep = teacher(feats, lengths)[1].view(len(complete), 3, -1)
    # neutral[k]: the mean of modality k's part of the representation over the complete training records
    torch.testing.assert_close(teacher.neutral, rep.mean(dim=0), rtol=1e-4, atol=1e-5)


def test_neutralised_logits_replace_exactly_one_modality():
    torch.manual_seed(5)
    teacher = FullModalityNetwork(SMALL).eval()
    teacher.neutral.copy_(torch.randn_like(teacher.neutral))
    feats, lengths = random_inputs(SMALL, [[8, 10, 6], [4, 3, 2]])
    with torch.no_grad():
        out = teacher.neutralised_logits(feats, lengths)  # (B, M, C)
        rep = teacher(feats, lengths)[1].view(2, 3, -1)
        rep[:, 1] = teacher.neutral[1]
        expected = teacher.head(rep.flatten(1))
    torch.testing.assert_close(out[:, 1], expected)


def test_two_missing_modalities_are_scored():
    model = EMMR(SMALL).eval()
    feats, lengths = random_inputs(SMALL, [[0, 0, 6], [8, 0, 0], [0, 10, 0]])
    with torch.inference_mode():
        out = model(feats, lengths)
    assert torch.isfinite(out.logits).all() and ((out.check.score >= 0) & (out.check.score <= 1)).all()
    km = out.check.key_modality
    assert all(k == -1 or not lengths[i, k] for i, k in enumerate(km.tolist()))  # a flagged modality is a missing one


def test_the_flag_threshold_travels_with_the_weights(trained, tmp_path):
    from emmr import checkpoint

    result, _, cfg = trained
    assert result.metrics["flag"]["target"] == cfg.flag_target
    assert result.model.flag_threshold.item() == pytest.approx(result.metrics["flag"]["threshold"])
    checkpoint.save(str(tmp_path), result.model, method="emmr", train_config=cfg.__dict__, metrics=result.metrics,
                    data_fingerprint={})
    loaded, _ = checkpoint.load(str(tmp_path))
    assert loaded.flag_threshold.item() == result.model.flag_threshold.item()


def test_paper_preset_forward_backward_and_parameter_count(capsys):
    config = preset("paper")
    model = EMMR(config).train()
    count = sum(p.numel() for p in model.parameters())
    print(f"paper preset: {count:,} parameters")  # reported in docs/model.md
    assert 5_000_000 < count < 20_000_000
    feats, lengths = random_inputs(config, [[100, 0, 25], [60, 150, 10]])
    out = model(feats, lengths, mode="all")
    (out.logits.sum() + out.ensemble_logits.sum()).backward()
    assert model.encoder.encoders[0].project.weight.grad is not None


def test_simulated_missingness_counts_existing_missing_records():
    present = np.ones((100, 3), dtype=bool)
    present[:10, 2] = False  # 10 already miss text
    drop = simulate_missing(present, 0.3, seeded_rng(0, 1))
    assert drop.sum() == 20 and drop.sum(axis=1).max() == 1  # 10 + 20 = 30 % miss one modality
    assert not drop[:10].any()  # the already-missing ones are not touched
    assert simulate_missing(present, 0.05, seeded_rng(0, 1)).sum() == 0
    many = simulate_missing(np.ones((30000, 3), bool), 1.0, seeded_rng(0, 2))
    assert np.allclose(many.sum(axis=0) / 30000, 1 / 3, atol=0.02)  # uniform over modalities
    np.testing.assert_array_equal(drop, simulate_missing(present, 0.3, seeded_rng(0, 1)))  # fixed per seed


def test_batch_drop_zeroes_and_marks_missing():
    batch = ModalityBatch(ids=np.array(["a", "b"], dtype=object),
                          features={"x": np.ones((2, 2, 1), np.float32), "y": np.ones((2, 1, 1), np.float32)},
                          lengths={"x": np.array([2, 1]), "y": np.array([1, 1])}, labels=np.array([0, 1]))
    dropped = batch.drop(np.array([[True, False], [False, False]]))
    assert dropped.lengths["x"].tolist() == [0, 1] and dropped.features["x"][0].sum() == 0
    assert batch.lengths["x"].tolist() == [2, 1]  # the original is unchanged


def test_protocol_masks_depend_on_the_rate_not_on_the_rates_beside_it():
    from emmr.evaluate import protocol_masks
    present = np.ones((200, 3), dtype=bool)
    alone = {(r, s): d for r, s, d in protocol_masks(present, [0.3], [0, 1])}
    among = {(r, s): d for r, s, d in protocol_masks(present, [0.5, 0.25, 0.3], [0, 1])}
    for key, drop in alone.items():
        np.testing.assert_array_equal(drop, among[key])
    assert not np.array_equal(among[(0.25, 0)], among[(0.3, 0)])
    # the protocol's rates keep the masks every published figure was measured with: seeded_rng(seed, 1000 + index)
    for index, (rate, seed, drop) in enumerate(protocol_masks(present, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [7])):
        np.testing.assert_array_equal(drop, simulate_missing(present, rate, seeded_rng(7, 1000 + index)))
