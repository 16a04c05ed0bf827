"""Resolving the model and training configurations: preset, then YAML file, then the data, then method, then flags.

The data decide the modalities and label names. A preset (or the YAML's `preset:`, `model.modalities`,
`model.label_names`) that names other ones is an error naming both. Without a preset or YAML, the preset that
fits the data is taken (with its training settings), else the `small` sizes with the data's modalities; a
YAML without `preset:` builds on the `small` preset and takes the modalities from the data.
"""

from __future__ import annotations

import logging

import yaml

from emmr.config import PRESET_TRAINING, PRESETS, ModelConfig, preset
from emmr.dataspec import DataSpec, fits, mismatch
from emmr.methods import apply_method
from emmr.train import TrainConfig

log = logging.getLogger(__name__)
DEFAULT_PRESET = "small"


def _read_yaml(config_file: str | None) -> dict:
    if not config_file:
        return {}
    with open(config_file) as f:
        doc = yaml.safe_load(f) or {}
    unknown = set(doc) - {"model", "train", "preset"}
    if unknown:
        raise ValueError(f"{config_file}: unknown sections {sorted(unknown)}; expected model, train, preset")
    return doc


def resolve(preset_name: str | None, config_file: str | None, method: str | None, overrides: dict,
            data: DataSpec | None = None) -> tuple[ModelConfig, TrainConfig]:
    """YAML: `preset:`, `model:` (fields of ModelConfig, modalities as [{name, dim, max_len}]) and `train:` (TrainConfig)."""
    doc = _read_yaml(config_file)
    yaml_model = doc.get("model") or {}
    name = doc.get("preset", preset_name)
    explicit = name is not None or "modalities" in yaml_model or "label_names" in yaml_model
    if name is None:  # a YAML without `preset:` builds on the default; no YAML at all: the preset that fits the data
        fitting = [] if config_file or data is None else [n for n, c in PRESETS.items() if fits(c, data)]
        name = fitting[0] if fitting else DEFAULT_PRESET
    model = ModelConfig.from_dict({**preset(name).to_dict(), **yaml_model})
    what = f"preset {name!r}" + (f" with {config_file}" if config_file else "")
    if data is not None and not fits(model, data):
        if explicit:
            raise ValueError(mismatch(what, model, data))
        model = model.with_(modalities=data.modalities, label_names=data.label_names or model.label_names)
        what = f"the sizes of preset {name!r} with the modalities of {data.source}"
    log.info("model: %s (%s)", what, DataSpec(model.modalities, model.label_names, what).describe())
    train = TrainConfig.from_dict({**TrainConfig().__dict__, **PRESET_TRAINING.get(name, {}), **(doc.get("train") or {})})
    model, train = apply_method(method or train.method, model, train)
    train = TrainConfig.from_dict({**train.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    return model, train
