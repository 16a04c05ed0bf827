"""The oracle (emmr/oracle.py, `emmr oracle`) and the ceilings `emmr evaluate` puts beside every synthetic figure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from emmr import synth
from emmr.batch import read_table
from emmr.config import preset
from emmr.evaluate import protocol_masks
from emmr.oracle import SynthTruth, oracle_flag, oracle_scores, present_modalities

SMALL = preset("small")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle-data")
    synth.write(synth.SynthParams(records=3000, seed=11, missing_rate=0.1), SMALL.modalities, str(out))
    return str(out)


def test_oracle_knows_complete_records_and_scores_missing_ones_from_the_posterior(data):
    table = read_table(data)
    truth = SynthTruth.from_table(table, SMALL.modality_names)
    labels = table.column("label").to_numpy()
    present = present_modalities(table, SMALL.modality_names)
    assert (present.sum(axis=1) >= 2).all() and (~present).sum() == 300  # --missing-rate 0.1 dropped one each
    o = oracle_scores(truth, ~present)
    complete = present.all(axis=1)
    assert (o.label_index[complete] == labels[complete]).all()  # nothing unknown: the label is known exactly
    assert (o.key_missing_score[complete] == 0).all()
    k = (~present).argmax(axis=1)
    written = np.stack([table.column(f"p_key_{n}").to_numpy() for n in SMALL.modality_names], axis=1)
    np.testing.assert_allclose(o.key_missing_score[~complete], written[~complete, k[~complete]], atol=1e-5)
    # Bayes is calibrated: among records it gives P(label) ~ p, about p of them have that label
    conf = o.probabilities[~complete].max(axis=1)
    right = o.label_index[~complete] == labels[~complete]
    assert abs(right.mean() - conf.mean()) < 0.05


def test_emmr_oracle_writes_its_figures_under_the_protocol_masks(data, tmp_path):
    subprocess.run([sys.executable, "-m", "emmr.cli", "oracle", "--data", data, "--out", str(tmp_path),
                    "--missing-rates", "0,0.5", "--seeds", "2"], check=True, capture_output=True, timeout=300)
    out = json.loads((tmp_path / "oracle.json").read_text())
    half = out["by_rate"]["0.5"]
    assert out["by_rate"]["0"]["accuracy"]["mean"] == pytest.approx(0.9 + 0.1 * half["accuracy_missing"]["mean"], abs=0.01)
    assert 0.75 < half["flag_auroc"]["mean"] < 1 and 0.5 < half["accuracy_missing"]["mean"] < 1
    # the same masks as evaluate: the runs' missing fraction is the protocol's
    assert half["missing_fraction"]["values"] == [0.5, 0.5]
    table = read_table(data)
    present = present_modalities(table, SMALL.modality_names)
    rate, seed, drop = list(protocol_masks(present, [0, 0.5], [0, 1]))[3]
    assert (rate, seed) == (0.5, 1)
    missing = ~present | drop
    o = oracle_scores(SynthTruth.from_table(table, SMALL.modality_names), missing)
    labels = table.column("label").to_numpy()
    assert out["runs"][3]["accuracy"] == pytest.approx(float((o.label_index == labels).mean()))
    assert out["runs"][3]["flag_rate"] == pytest.approx(float(oracle_flag(o, missing).mean()))


def test_data_without_the_generators_parameters_have_no_oracle():
    plain = synth.generate(synth.SynthParams(records=10, seed=1), SMALL.modalities)
    plain = plain.replace_schema_metadata({})
    assert SynthTruth.from_table(plain, SMALL.modality_names) is None
