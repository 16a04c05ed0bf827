"""The assembled model: gradients, the frozen teacher, inference on flagged rows only, the paper preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emmr.batch import ModalityBatch
from emmr.config import preset
from emmr.methods import METHODS, apply_method
from emmr.missing import seeded_rng, simulate_missing
from emmr.nn.emmr import EMMR
from emmr.nn.losses import backward_loss, forward_loss, task_loss, total_loss
from emmr.nn.teacher import FullModalityNetwork
from emmr.train import TrainConfig, train_emmr

SMALL = preset("small")


def random_inputs(config, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(len(lengths), m.max_len, m.dim, generator=g) for m in config.modalities]
    return feats, torch.tensor(lengths)


def training_loss(model, teacher, feats, lengths, full_lengths, labels):
    out = model(feats, lengths)
    with torch.no_grad():
        _, rep = teacher(feats, full_lengths)
        target, fm = model.embed(feats, full_lengths)
    rows = torch.ones(len(labels), dtype=torch.bool)
    return total_loss(task_loss(out, labels, 1.0), forward_loss(rep, out.reps, rows),
                      backward_loss(out.decoded, target, fm.observed), 0.1, 0.1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_trainable_parameter_gets_a_gradient(method):
    config, _ = apply_method(method, SMALL, TrainConfig())
    torch.manual_seed(0)
    model, teacher = EMMR(config).train(), FullModalityNetwork(config).eval()
    full = [[8, 10, 6], [4, 3, 2], [8, 10, 6], [5, 5, 5]]
    lengths = [[8, 0, 6], [0, 3, 2], [8, 10, 0], [5, 5, 5]]
    feats, lengths_t = random_inputs(config, lengths)
    loss = training_loss(model, teacher, feats, lengths_t, torch.tensor(full), torch.tensor([0, 1, 2, 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert all(p.grad is None for p in teacher.parameters())


def test_inference_runs_other_members_only_on_flagged_rows_and_matches_full_computation():
    torch.manual_seed(1)
    model = EMMR(SMALL).eval()
    lengths = [[8, 0, 6], [0, 3, 2], [8, 10, 0], [5, 5, 5], [3, 0, 0], [8, 10, 6]] * 5
    feats, lengths_t = random_inputs(SMALL, lengths, seed=2)
    seen = []
    hook = model.members["ae"].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.inference_mode():
        fast = model(feats, lengths_t, all_members=False)
        slow = model(feats, lengths_t, all_members=True)
    hook.remove()
    flagged = int(fast.check.key_missing.sum())
    assert seen == [flagged, len(lengths)]  # inference: only the flagged rows met the AE member
    assert 0 < flagged < len(lengths), "the random model should flag some rows, not all"
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-4, atol=1e-5)
    assert not fast.check.key_missing[3::6].any() and not fast.check.key_missing[5::6].any()  # complete rows


def test_two_missing_modalities_are_scored():
    model = EMMR(SMALL).eval()
    feats, lengths = random_inputs(SMALL, [[0, 0, 6], [8, 0, 0], [0, 10, 0]])
    with torch.inference_mode():
        out = model(feats, lengths)
    assert torch.isfinite(out.logits).all()
    km = out.check.key_modality
    assert all(k == -1 or not lengths[i, k] for i, k in enumerate(km.tolist()))  # a flagged modality is a missing one


def test_teacher_weights_do_not_change_during_emmr_training():
    from emmr import synth
    from emmr.batch import from_arrow
    from emmr.train import split_validation, train_teacher

    table = synth.generate(synth.SynthParams(records=120, seed=4), SMALL.modalities)
    batch = from_arrow(table, SMALL.modalities)
    tr, va = split_validation(batch, 0.25, 0)
    cfg = TrainConfig(epochs=2, teacher_epochs=1, batch_size=16)
    teacher, best, _ = train_teacher(tr, va, SMALL, cfg, progress=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train_emmr(tr, va, SMALL, cfg, progress=False, teacher=(teacher, best))
    assert result.teacher is teacher
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_paper_preset_forward_backward_and_parameter_count(capsys):
    config = preset("paper")
    model = EMMR(config).train()
    count = sum(p.numel() for p in model.parameters())
    print(f"paper preset: {count:,} parameters")  # reported in docs/model.md
    assert 5_000_000 < count < 10_000_000
    feats, lengths = random_inputs(config, [[100, 0, 25], [60, 150, 10]])
    out = model(feats, lengths)
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


def test_only_the_backbone_trains_the_shared_representation():
    """Gradients of the other members and of the ensemble never reach the encoders, slots or backbone."""
    torch.manual_seed(0)
    model = EMMR(SMALL).train()
    feats, lengths = random_inputs(SMALL, [[8, 0, 6], [0, 3, 2], [8, 10, 0], [5, 5, 5]])
    out = model(feats, lengths)
    loss = out.ensemble_logits.sum() + sum(r.sum() for r in out.reps[1:]) + sum(d.sum() for d in out.decoded[1:])
    loss.backward()
    shared = [p for n, p in model.named_parameters() if n.startswith(("encoder.", "slots.", "members.tf.", "heads."))]
    assert shared and all(p.grad is None for p in shared)
    assert model.members["ae"].encoder[0].weight.grad is not None
