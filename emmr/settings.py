"""Resolving the model and training configurations: preset, then YAML file, then method, then flags."""

from __future__ import annotations

import yaml

from emmr.config import ModelConfig, preset
from emmr.methods import apply_method
from emmr.train import TrainConfig


def resolve(preset_name: str, config_file: str | None, method: str | None, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """YAML: `model:` (fields of ModelConfig, modalities as [{name, dim, max_len}]) and `train:` (TrainConfig)."""
    model = preset(preset_name)
    train = TrainConfig()
    if config_file:
        with open(config_file) as f:
            doc = yaml.safe_load(f) or {}
        unknown = set(doc) - {"model", "train", "preset"}
        if unknown:
            raise ValueError(f"{config_file}: unknown sections {sorted(unknown)}; expected model, train, preset")
        if "preset" in doc:
            model = preset(doc["preset"])
        model = ModelConfig.from_dict({**model.to_dict(), **(doc.get("model") or {})})
        train = TrainConfig.from_dict({**train.__dict__, **(doc.get("train") or {})})
    model, train = apply_method(method or train.method, model, train)
    train = TrainConfig.from_dict({**train.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    return model, train
