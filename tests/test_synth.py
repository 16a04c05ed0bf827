"""Synthetic data: valid input v1, the asked missing fraction, and key-modality truth right by construction."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.special import ndtr

from emmr import synth
from emmr.batch import from_arrow
from emmr.config import preset
from schemas import validate_input

SMALL = preset("small")
NAMES = SMALL.modality_names


def emmr_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "emmr")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "emmr.cli"]


@pytest.fixture(scope="module")
def acceptance_data(tmp_path_factory):
    """The acceptance command of the foundation issue, run through the console script."""
    out = tmp_path_factory.mktemp("acc")
    subprocess.run(emmr_command() + ["synth", "--out", str(out), "--records", "1000", "--seed", "1", "--preset", "small",
                                     "--missing-rate", "0.3"], check=True)
    return pq.read_table(str(out))


def test_acceptance_reads_back_and_validates(acceptance_data):
    table = acceptance_data
    assert table.num_rows == 1000
    result = validate_input(table, SMALL.modalities, num_classes=3)
    assert result.valid.all(), result.errors[:3]
    assert len(set(table.column("id").to_pylist())) == 1000


def test_missing_fraction_is_what_was_asked(acceptance_data):
    table = acceptance_data
    dropped = table.column("dropped").to_pylist()
    assert sum(d is not None for d in dropped) == 300
    batch = from_arrow(table, SMALL.modalities)
    present = batch.present()
    for i, d in enumerate(dropped):  # the dropped modality, and only it, is missing
        assert present[i].tolist() == [name != d for name in NAMES]
    counts = [dropped.count(n) for n in NAMES]
    assert min(counts) > 60  # uniform over the three modalities (expected 100 each)


def test_key_truth_recomputed_independently(acceptance_data):
    """Recompute label, labels without each modality and key flags row by row from the written evidence, by the
    README's rule: without k = k neutralised (its evidence 0), the mean still over all three."""
    rows = acceptance_data.slice(0, 300).to_pylist()
    params = synth.SynthParams(records=1000, seed=1, classes=3, missing_rate=0.3)
    tau = synth.threshold(params, 3)

    def cls(x: float) -> int:
        return 0 if x < -tau else (2 if x > tau else 1)

    n_key = 0
    for r in rows:
        e = [r[f"evidence_{n}"] for n in NAMES]
        full = cls(sum(e) / 3)
        assert r["label"] == full
        for k, n in enumerate(NAMES):
            without = cls((sum(e) - e[k]) / 3)
            assert r[f"label_without_{n}"] == without, (r["id"], n)
            assert r[f"key_{n}"] == (without != full), (r["id"], n)
            n_key += r[f"key_{n}"]
    assert 0.05 < n_key / (3 * len(rows)) < 0.5  # key cases exist and are not the rule


def test_evidence_follows_the_generative_model(acceptance_data):
    """e_m = a z_0 + b z_i z_j + c eps_m: the residual after the shared parts has variance c^2 and is
    uncorrelated with the latents; the nonlinear part is invisible to a linear fit on z."""
    params = synth.SynthParams(records=1000, seed=1)
    z = np.stack(acceptance_data.column("latent").to_pylist())
    e = np.stack([acceptance_data.column(f"evidence_{n}").to_numpy() for n in NAMES], axis=1)
    h = synth.nonlinear_part(z, 3)
    assert synth.content_pairs(3) == [(1, 2), (1, 3), (2, 3)] and z.shape[1] == 4
    residual = e - params.shared * z[:, :1] - params.nonlinear * h
    assert np.allclose(residual.std(axis=0), params.private, rtol=0.1)
    assert np.abs(np.corrcoef(np.c_[residual, z].T)[:3, 3:]).max() < 0.15  # 1,000 records: sd about 0.03
    linear = np.linalg.lstsq(np.c_[z, np.ones(len(z))], e, rcond=None)[0]
    assert np.allclose(linear[0], params.shared, atol=0.15) and np.abs(linear[1:4]).max() < 0.15


def test_key_probability_by_hand():
    """p_key: e_k ~ N(a z_0 + b z_i z_j, c^2) given the rest; k is key when e_k moves the mean out of the class
    the others give with e_k = 0."""
    params = synth.SynthParams(records=1, classes=2)
    z = np.array([[0.5, 1.0, -2.0, 0.0]])  # k = 2 uses the pair (2, 3): z_2 z_3 = 0
    e = np.array([[0.3, -0.1, 9.9]])  # e_0, e_1 observed; e_2's value must not matter
    mu = params.shared * 0.5
    # without k: (0.3 - 0.1) / 3 > 0 -> positive; k is key when the full mean is <= 0: e_k <= -0.2
    expected = ndtr((-0.2 - mu) / params.private)
    assert synth.key_probability(params, z, e, tau=0.0)[0, 2] == pytest.approx(expected, rel=1e-9)
    probs = synth.posterior(params, z, e, np.array([[False, False, True]]), tau=0.0)[0]
    assert probs == pytest.approx([expected, 1 - expected], rel=1e-9)


def test_p_key_columns_are_the_posterior(acceptance_data):
    params = synth.SynthParams(records=1000, seed=1, missing_rate=0.3)
    z = np.stack(acceptance_data.column("latent").to_pylist()).astype(np.float64)
    e = np.stack([acceptance_data.column(f"evidence_{n}").to_numpy() for n in NAMES], axis=1).astype(np.float64)
    written = np.stack([acceptance_data.column(f"p_key_{n}").to_numpy() for n in NAMES], axis=1)
    np.testing.assert_allclose(written, synth.key_probability(params, z, e, synth.threshold(params, 3)), atol=1e-5)
    key = np.stack([acceptance_data.column(f"key_{n}").to_numpy() for n in NAMES], axis=1)
    assert written[key].mean() > 0.5 > written[~key].mean()  # informative: the key ones are likely key
    assert synth.params_from_schema(acceptance_data.schema) == (params, synth.threshold(params, 3))


def test_binary_key_truth():
    params = synth.SynthParams(records=200, seed=5, classes=2)
    table = synth.generate(params, SMALL.modalities)
    e = np.stack([table.column(f"evidence_{n}").to_numpy() for n in NAMES], axis=1)
    assert (table.column("label").to_numpy() == (e.sum(axis=1) > 0)).all()
    key = np.stack([table.column(f"key_{n}").to_numpy() for n in NAMES], axis=1)
    for k in range(3):
        others = np.delete(e, k, axis=1).sum(axis=1) > 0
        assert (key[:, k] == (others != (e.sum(axis=1) > 0))).all()


def test_features_carry_each_modality_evidence():
    """The evidence is readable from the features: projection on the world's direction tracks it."""
    params = synth.SynthParams(records=500, seed=2)
    table = synth.generate(params, SMALL.modalities)
    batch = from_arrow(table, SMALL.modalities)
    world = synth.World.make(SMALL.modalities, params.world_seed)
    for j, n in enumerate(NAMES):
        x, lengths = batch.features[n], batch.lengths[n]
        proj = (x @ world.direction[j]).sum(axis=1) / lengths / SMALL.modalities[j].dim
        corr = np.corrcoef(proj, table.column(f"evidence_{n}").to_numpy())[0, 1]
        assert corr > 0.5, (n, corr)


def test_same_world_across_seeds_and_deterministic():
    a = synth.generate(synth.SynthParams(records=50, seed=1), SMALL.modalities)
    b = synth.generate(synth.SynthParams(records=50, seed=1), SMALL.modalities)
    c = synth.generate(synth.SynthParams(records=50, seed=2), SMALL.modalities)
    assert a.equals(b)
    assert a.column("id").to_pylist() != c.column("id").to_pylist()
    assert not set(a.column("id").to_pylist()) & set(c.column("id").to_pylist())


def test_paper_preset_chunks(tmp_path):
    paper = preset("paper")
    path = synth.write(synth.SynthParams(records=40, seed=0, missing_rate=0.5), paper.modalities, str(tmp_path),
                       target_group_bytes=8 << 20)
    f = pq.ParquetFile(path)
    assert f.metadata.num_row_groups > 1 and f.metadata.num_rows == 40
    table = f.read()
    assert validate_input(table, paper.modalities, 3).valid.all()
    assert table.column("dropped").is_valid().to_numpy(zero_copy_only=False).sum() == 20
