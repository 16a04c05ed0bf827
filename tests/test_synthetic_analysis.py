"""The scripts behind docs/synthetic.md run on what `emmr compare` writes: docs/synthetic/analyse.py (EMMR against
TF per record, the controls) and docs/synthetic/flag_variants.py (flag-score variants), end to end on a tiny
synthetic split, with the properties the doc states: EMMR equals TF on every record its check does not flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emmr import synth
from emmr.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "synthetic", name), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_analyse_and_flag_variants_on_a_compare_run(tmp_path, small_config):
    for split, records, seed in (("train", 240, 11), ("val", 120, 12), ("test", 160, 13)):
        synth.write(synth.SynthParams(records=records, seed=seed), small_config.modalities, str(tmp_path / split))
    out = tmp_path / "cmp"
    (tmp_path / "keep.yaml").write_text("train:\n  ensemble_gate: false\n")  # flag_variants.py reads the ensemble
    assert cli_main(["compare", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
                     "--test", str(tmp_path / "test"), "--out", str(out), "--methods", "emmr,tf", "--seeds", "2",
                     "--epochs", "1", "--teacher-epochs", "1", "--threads", "1", "--missing-rates", "0,0.3",
                     "--config", str(tmp_path / "keep.yaml")]) == 0
    training = json.loads((out / "metrics.json").read_text())["methods"]
    assert [t["seed"] for t in training["emmr"]["training"]] == [0, 1] and training["tf"]["training"][0]["ensemble"] is None
    assert all(t["ensemble"]["kept"] and not t["ensemble"]["gate"] for t in training["emmr"]["training"])
    assert "## the ensemble gate" in (out / "metrics.md").read_text()

    _script("analyse.py", "--compare", str(out), "--test", str(tmp_path / "test"), "--out", str(tmp_path / "a.json"))
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["seeds"] == [0, 1] and a["rates"] == [0.3]
    assert a["records_missing_pooled"] == 2 * round(0.3 * 160)  # two seeds, one rate
    assert a["differences_on_complete_records"] == 0 and a["differences_on_unflagged_records"] == 0
    for counts in a["against_tf_on_missing"].values():
        assert counts["net"] == counts["wins"] - counts["losses"] and 0 <= counts["sign_test_p"] <= 1
    assert 0 <= a["accuracy_missing"]["emmr"] <= 1 and 0 < a["oracle_flag_auroc"] <= 1

    text = _script("flag_variants.py", "--data", str(tmp_path / "val"),
                   *(str(out / "checkpoints" / f"emmr-seed{s}") for s in (0, 1)))
    summary = json.loads(text[text.index("{\n"):])
    assert {"backbone", "ensemble_full", "true_pair", "oracle", "backbone_over_oracle"} <= set(summary)
    assert all(0 <= v <= 1 for k, v in summary.items() if not k.endswith("_over_oracle"))


def test_backbone_flag_trains_with_the_settings_given(tmp_path, small_config):
    for split, records, seed in (("train", 120, 21), ("val", 60, 22), ("test", 80, 23)):
        synth.write(synth.SynthParams(records=records, seed=seed), small_config.modalities, str(tmp_path / split))
    text = _script("backbone_flag.py", "--data", str(tmp_path), "--seed", "1", "--set", "epochs=1",
                   "--set", "teacher_epochs=1", "--set", "weight_average=0")
    run = json.loads(text.strip().splitlines()[-1])
    assert run["seed"] == 1 and run["set"] == {"epochs": 1, "teacher_epochs": 1, "weight_average": 0}
    assert 0 <= run["flag_auroc"] <= 1 and 0 < run["oracle_auroc"] <= 1 and 0 <= run["accuracy_missing_0.3"] <= 1
    assert run["ratio"] == pytest.approx(run["flag_auroc"] / run["oracle_auroc"])
