"""The methods compared in one harness: EMMR, its members alone (baselines) and the ablations.

Each method is a change to the model and training configurations; the training loop is the same for all.
"""

from __future__ import annotations

from dataclasses import replace

from emmr.config import ModelConfig

METHODS: dict[str, tuple[dict, dict, str]] = {
    "emmr": ({}, {}, "EMMR: the preset's members (the paper's TF, AE and MMIN; small: three TF), check, attention "
                     "ensemble (Eq. 1-18)"),
    "tf": ({"members": ("tf",)}, {}, "TF alone: the backbone with recovery, no ensemble"),
    "ae": ({"members": ("ae",)}, {}, "AE alone"),
    "mmin": ({"members": ("mmin",)}, {}, "MMIN alone"),
    "emmr-max": ({"fusion": "max"}, {}, "EMMR with max fusion instead of Eq. 12"),
    "emmr-average": ({"fusion": "average"}, {}, "EMMR with average fusion instead of Eq. 12"),
    "emmr-no-forward": ({}, {"lambda_forward": 0.0}, "EMMR without the forward loss (Eq. 15-16)"),
    "emmr-no-backward": ({}, {"lambda_backward": 0.0}, "EMMR without the backward loss (Eq. 17-18)"),
}


def apply_method(name: str, model: ModelConfig, train):
    """-> (model config, train config) for method `name`."""
    try:
        model_changes, train_changes, _ = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None
    return model.with_(**model_changes), replace(train, method=name, **train_changes)
