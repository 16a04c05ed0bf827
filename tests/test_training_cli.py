"""`emmr train`, `emmr evaluate` and `emmr compare` end to end on small synthetic data; checkpoint safety."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from emmr import checkpoint
from emmr.scorer import Scorer, resolve_device
from tests.test_synth import emmr_command


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for split, seed, n, rate in (("train", 1, 300, 0.0), ("test", 2, 150, 0.2)):
        subprocess.run(emmr_command() + ["synth", "--out", str(root / split), "--records", str(n), "--seed", str(seed),
                                         "--missing-rate", str(rate)], check=True)
    return root


@pytest.fixture(scope="module")
def ckpt(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    config = tmp_path_factory.mktemp("cfg") / "train.yaml"
    config.write_text(yaml.safe_dump({"train": {"batch_size": 16, "missing_rate": 0.4}, "model": {"hidden": 16}}))
    subprocess.run(emmr_command() + ["train", "--data", str(data / "train"), "--out", str(out), "--config", str(config),
                                     "--epochs", "2", "--teacher-epochs", "1", "--seed", "3", "--no-progress"], check=True)
    return out


def test_checkpoint_is_self_describing(ckpt):
    assert sorted(os.listdir(ckpt)) == ["checkpoint.json", "model.safetensors", "teacher.safetensors"]
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["schema_version"] == "1" and meta["method"] == "emmr"
    assert meta["model"]["hidden"] == 16  # from the YAML
    assert meta["train"]["batch_size"] == 16 and meta["train"]["epochs"] == 2 and meta["train"]["seed"] == 3  # YAML + flags
    assert meta["label_names"] == ["negative", "neutral", "positive"]
    assert meta["data"]["records"] == 300 and len(meta["data"]["sha256"]) == 64
    assert meta["metrics"]["validation"]["epoch"] in (1, 2)
    scorer = Scorer.load(str(ckpt))
    assert scorer.version == meta["model_version"] == meta["files"]["model.safetensors"][:12]
    teacher = checkpoint.load_teacher(str(ckpt))
    assert not teacher.training and teacher.head[-1].out_features == 3


def test_corrupt_or_replaced_weights_fail_with_a_clear_message(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors: SHA-256 .* does not match"):
        checkpoint.load(str(bad))
    (bad / "model.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="cannot read .*model.safetensors"):
        checkpoint.load(str(bad))
    (bad / "checkpoint.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.load(str(bad))
    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        checkpoint.load(str(tmp_path / "nowhere"))


def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_evaluate_writes_the_protocol(ckpt, data, tmp_path):
    out = tmp_path / "eval"
    subprocess.run(emmr_command() + ["evaluate", "--checkpoint", str(ckpt), "--data", str(data / "test"), "--out", str(out),
                                     "--seeds", "5"], check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    by_rate = metrics["methods"]["emmr"]["by_rate"]
    assert list(by_rate) == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"]
    for stats in by_rate.values():
        for key in ("accuracy", "macro_f1", "flag_rate", "flag_precision", "flag_recall"):
            assert len(stats[key]["values"]) == 5
    # 20 % of the test data already miss a modality: they count toward the rate
    assert by_rate["0"]["missing_fraction"]["mean"] == pytest.approx(0.2)
    assert by_rate["0.5"]["missing_fraction"]["mean"] == pytest.approx(0.5)
    for name in ("metrics.md", "metrics.csv", "accuracy_vs_missing_rate.png", "macro_f1_vs_missing_rate.png",
                 "confusion_emmr.png"):
        assert (out / name).stat().st_size > 0


def test_compare_produces_the_table(data, tmp_path):
    out = tmp_path / "cmp"
    subprocess.run(emmr_command() + ["compare", "--train", str(data / "train"), "--test", str(data / "test"), "--out", str(out),
                                     "--methods", "emmr,tf,emmr-average", "--seeds", "2", "--epochs", "1",
                                     "--teacher-epochs", "1", "--missing-rates", "0,0.5"], check=True)
    table = (out / "metrics.md").read_text()
    for method in ("| emmr |", "| tf |", "| emmr-average |"):
        assert method in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["methods"]["tf"]["runs"]) == 4  # 2 seeds x 2 rates
