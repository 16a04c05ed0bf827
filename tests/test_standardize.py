"""Generalisation knobs: standardisation with training statistics (fitted, saved with the weights, applied by the
Scorer and therefore by the Beam job) and the training-only input perturbations."""

from __future__ import annotations

import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from beam_pipeline.run import run as run_job
from emmr import checkpoint
from emmr.augment import perturb
from emmr.batch import ModalityBatch, from_arrow, load_records
from emmr.cli import main as cli_main
from emmr.scorer import Scorer
from emmr.standardize import MIN_STD, Standardizer
from tests.test_dataspec import mosi_like  # noqa: F401  (fixture)


def _batch() -> ModalityBatch:
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 3.0, size=(6, 3, 2)).astype(np.float32)
    a[:, :, 1] = 7.0  # a constant feature
    lengths = np.array([3, 2, 0, 1, 3, 2])
    a[np.arange(3)[None, :] >= lengths[:, None]] = 0  # padding and a missing record are zeros
    b = rng.normal(-1.0, 0.1, size=(6, 1, 4)).astype(np.float32)
    return ModalityBatch(ids=np.array([f"r{i}" for i in range(6)], dtype=object), features={"a": a, "b": b},
                         lengths={"a": lengths, "b": np.ones(6, np.int64)}, labels=np.zeros(6, np.int64))


def test_standardizer_uses_observed_steps_only_and_keeps_padding_zero():
    batch = _batch()
    s = Standardizer.fit(batch)
    observed = batch.features["a"][np.arange(3)[None, :] < batch.lengths["a"][:, None]]  # (11, 2)
    np.testing.assert_allclose(s.mean["a"], observed.mean(0), rtol=1e-5)
    assert s.std["a"][1] == pytest.approx(MIN_STD)  # constant: centred, not divided by zero
    out = s.apply(batch)
    z = out.features["a"][np.arange(3)[None, :] < batch.lengths["a"][:, None]]
    np.testing.assert_allclose(z[:, 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, 0].std(), 1, atol=1e-4)
    assert (z[:, 1] == 0).all()
    padding = np.arange(3)[None, :] >= batch.lengths["a"][:, None]
    assert (out.features["a"][padding] == 0).all() and (out.features["a"][2] == 0).all()
    again = Standardizer.from_tensors(s.tensors(), ("a", "b"))
    assert all((again.mean[n] == s.mean[n]).all() and (again.std[n] == s.std[n]).all() for n in ("a", "b"))


def test_perturb_touches_observed_steps_only_in_training():
    torch.manual_seed(0)
    x = [torch.ones(4, 3, 5), torch.ones(4, 1, 2)]
    lengths = torch.tensor([[3, 1], [1, 0], [0, 1], [2, 1]])
    assert perturb(x, lengths, 0.0, 0.0) is x
    for noise, dropout in ((0.5, 0.0), (0.0, 0.5), (0.3, 0.3)):
        out = perturb(x, lengths, noise, dropout)
        for m in range(2):
            observed = torch.arange(x[m].shape[1])[None, :] < lengths[:, m:m + 1]
            assert (out[m][~observed] == 0).all()
            assert (out[m][observed] != 1).any()
    big = perturb([torch.ones(200, 1, 500)], torch.ones(200, 1, dtype=torch.long), 0.0, 0.5)[0]
    assert set(big.unique().tolist()) == {0.0, 2.0} and abs(big.mean().item() - 1) < 0.02  # inverted dropout


@pytest.fixture()
def standardized_ckpt(mosi_like, tmp_path):  # noqa: F811
    config = tmp_path / "std.yaml"
    config.write_text(yaml.safe_dump({"train": {"standardize": True, "feature_noise": 0.1, "label_smoothing": 0.1}}))
    out = tmp_path / "ckpt"
    assert cli_main(["train", "--data", str(mosi_like), "--out", str(out), "--config", str(config), "--epochs", "2",
                     "--teacher-epochs", "1", "--no-progress"]) == 0
    return out


def test_the_statistics_travel_with_the_checkpoint_and_the_scorer_applies_them(standardized_ckpt, mosi_like, tmp_path):  # noqa: F811
    scorer = Scorer.load(str(standardized_ckpt))
    assert scorer.standardizer is not None and checkpoint.STANDARDIZE_FILE in scorer.meta["files"]
    train, _ = load_records(str(mosi_like / "train"), scorer.config.modalities)
    fitted = Standardizer.fit(train)  # the statistics are the training data's
    assert all(np.allclose(scorer.standardizer.mean[n], fitted.mean[n]) for n in train.names)
    dev, _ = load_records(str(mosi_like / "dev"), scorer.config.modalities)
    raw = Scorer(scorer.model, scorer.meta, scorer.device)  # the same weights, no standardisation
    by_hand = raw.score(fitted.apply(dev))
    applied = scorer.score(dev)
    np.testing.assert_array_equal(applied.probabilities, by_hand.probabilities)
    assert not np.array_equal(raw.score(dev).probabilities, applied.probabilities)
    stats = standardized_ckpt / checkpoint.STANDARDIZE_FILE
    stats.write_bytes(stats.read_bytes()[:-1] + b"\x00")
    with pytest.raises(checkpoint.CheckpointError, match="standardize.safetensors: SHA-256"):
        Scorer.load(str(standardized_ckpt))


@pytest.mark.slow
def test_the_batch_job_scores_with_the_training_statistics(standardized_ckpt, mosi_like, tmp_path):  # noqa: F811
    out = tmp_path / "job"
    result = run_job(["--runner=DirectRunner", "--input", str(mosi_like / "dev" / "*.parquet"), "--model",
                      str(standardized_ckpt), "--output", f"{out}/predictions/part", "--dead_letter",
                      f"{out}/dead_letters/part"])
    assert result.conserved
    got = pa.concat_tables([pq.read_table(f) for f in glob.glob(f"{out}/predictions/part*")]).to_pylist()
    scorer = Scorer.load(str(standardized_ckpt))
    table = pq.read_table(str(mosi_like / "dev" / "part-00000.parquet"))
    want = scorer.score(from_arrow(table, scorer.config.modalities))
    want_by_id = dict(zip(table.column("id").to_pylist(), want.probabilities))
    assert len(got) == len(want_by_id) == 6
    for row in got:
        np.testing.assert_allclose(row["probabilities"], want_by_id[row["id"]], rtol=1e-5, atol=1e-6)
