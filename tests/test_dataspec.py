"""Training takes the modalities and labels from the data (emmr/dataspec.py, emmr/settings.py): no preset needed,
and a preset that names other modalities is a one-line error naming both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emmr import synth
from emmr.cli import main as cli_main
from emmr.config import preset
from emmr.convert import mosi_csv
from emmr.dataspec import data_spec, splits_of
from emmr.settings import resolve
from schemas.modality import ModalitySpec
from tests.test_convert import make_mosi_csv


@pytest.fixture()
def mosi_like(tmp_path):
    """A converted MOSI-layout data set with the fixture's sizes (visual 4, acoustic 5, text 3): train and dev."""
    make_mosi_csv(tmp_path / "src", np.random.default_rng(0))
    mosi_csv.convert(str(tmp_path / "src"), str(tmp_path / "data"))
    return tmp_path / "data"


FIXTURE_MODS = (ModalitySpec("visual", 4, 1), ModalitySpec("acoustic", 5, 1), ModalitySpec("text", 3, 1))


def test_spec_from_dataset_json_for_the_folder_and_its_splits(mosi_like):
    for path in (mosi_like, mosi_like / "train", mosi_like / "dev"):
        spec = data_spec(str(path))
        assert spec.modalities == FIXTURE_MODS and spec.label_names == ("negative", "positive")
        assert spec.source.endswith("dataset.json")
    assert splits_of(str(mosi_like), None) == (str(mosi_like / "train"), str(mosi_like / "dev"))
    assert splits_of(str(mosi_like), "elsewhere") == (str(mosi_like / "train"), "elsewhere")
    assert splits_of(str(mosi_like / "train"), None) == (str(mosi_like / "train"), None)


def test_spec_from_the_parquet_schema_ignores_truth_columns(tmp_path):
    mods = (ModalitySpec("visual", 6, 5), ModalitySpec("audio", 3, 9))
    synth.write(synth.SynthParams(records=40, seed=1, missing_rate=0.2), mods, str(tmp_path))
    spec = data_spec(str(tmp_path))
    assert [(m.name, m.dim) for m in spec.modalities] == [("visual", 6), ("audio", 3)]
    assert all(1 <= s.max_len <= m.max_len for s, m in zip(spec.modalities, mods))
    assert spec.label_names is None and "Parquet schema" in spec.source


def test_without_a_preset_the_data_decide(mosi_like):
    model, _ = resolve(None, None, None, {}, data_spec(str(mosi_like)))
    small = preset("small")
    assert model.modalities == FIXTURE_MODS and model.label_names == ("negative", "positive")
    assert (model.hidden, model.ffn) == (small.hidden, small.ffn)  # no preset fits: small's sizes
    mosi = preset("mosi")
    from emmr.dataspec import DataSpec

    model, _ = resolve(None, None, None, {}, DataSpec(mosi.modalities, mosi.label_names, "MOSI"))
    assert model == mosi  # the preset that fits the data


def test_a_preset_that_does_not_fit_is_one_line_naming_both(mosi_like, tmp_path):
    with pytest.raises(ValueError) as e:
        resolve("mosi", None, None, {}, data_spec(str(mosi_like)))
    message = str(e.value)
    assert "\n" not in message and "preset 'mosi'" in message and "visual 100x1" in message
    assert "visual 4x1" in message and "dataset.json" in message
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  label_names: [a, b, c]\n")
    with pytest.raises(ValueError, match=r"labels \['a', 'b', 'c'\], but the data .* labels \['negative', 'positive'\]"):
        resolve(None, str(config), None, {}, data_spec(str(mosi_like)))


def test_train_on_a_converted_folder_without_a_preset(mosi_like, tmp_path, caplog):
    out = tmp_path / "ckpt"
    assert cli_main(["train", "--data", str(mosi_like), "--out", str(out), "--epochs", "1", "--teacher-epochs", "1",
                     "--no-progress"]) == 0
    meta = json.loads((out / "checkpoint.json").read_text())
    assert [ModalitySpec.from_dict(m) for m in meta["model"]["modalities"]] == list(FIXTURE_MODS)
    assert meta["label_names"] == ["negative", "positive"]
    assert meta["metrics"]["validation_records"] == 6 and meta["metrics"]["train_records"] == 14  # dev, not carved
    assert meta["metrics"]["validation_data"] == str(mosi_like / "dev")
    assert cli_main(["train", "--data", str(mosi_like), "--out", str(tmp_path / "other"), "--preset", "small"]) == 2
    assert "preset 'small' has modalities visual 16x8" in caplog.text


def test_the_paper_yaml_takes_the_modalities_from_the_data(mosi_like):
    model, train = resolve(None, str(Path(__file__).resolve().parents[1] / "docs" / "paper.yaml"), None, {}, data_spec(str(mosi_like)))
    assert model.modalities == FIXTURE_MODS and model.label_names == ("negative", "positive")
    assert (model.hidden, model.ffn, model.mmin_blocks, train.batch_size) == (300, 1200, 5, 32)
