"""Scoring API used by the pipeline and the evaluation: a loaded checkpoint that turns a ModalityBatch into
predictions with their key-missing flags (numpy in, numpy out; torch stays inside)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from emmr import checkpoint
from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.nn.emmr import EMMR
from emmr.standardize import Standardizer
from emmr.tensors import model_inputs


@dataclass
class Scores:
    probabilities: np.ndarray  # (B, C) float32
    label_index: np.ndarray  # (B,) int64
    key_missing: np.ndarray  # (B,) bool: key_missing_score >= the checkpoint's threshold
    key_missing_score: np.ndarray  # (B,) float32: P(the missing modality is key); 0 when nothing is missing
    key_modality: np.ndarray  # (B,) int64, -1 = none
    label_full: np.ndarray  # (B,) int64: argmax of Eq. 8
    label_pair: np.ndarray  # (B,) int64: argmax of Eq. 9 for the reported modality; -1 when nothing is missing
    ensemble_used: np.ndarray  # (B,) bool


class DeviceError(RuntimeError):
    """The device asked for is not there (cuda without a GPU); never answered by a silent CPU fallback."""


def resolve_device(name: str) -> torch.device:
    """The device asked for, or an error: a job asked to run on a GPU never falls back to the CPU silently."""
    try:
        device = torch.device(name)
    except RuntimeError as e:  # torch's own message: "Expected one of cpu, cuda, ... device type at start of ..."
        raise ValueError(f"device {name!r}: expected cpu, cuda or cuda:N ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {name!r}")
    return device


class Scorer:
    def __init__(self, model: EMMR, meta: dict, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 load_seconds: float = 0.0, standardizer: Standardizer | None = None):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.standardizer = standardizer  # the training statistics the weights expect (emmr/standardize.py)
        self.autocast_dtype = autocast_dtype
        self.load_seconds = load_seconds

    @classmethod
    def load(cls, path: str, device: str = "cpu", autocast: str | None = None) -> "Scorer":
        dev = resolve_device(device)
        started = time.perf_counter()
        model, meta = checkpoint.load(path, dev)
        standardizer = checkpoint.load_standardizer(path, meta)
        dtype = {None: None, "none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[autocast]
        return cls(model, meta, dev, dtype, load_seconds=time.perf_counter() - started, standardizer=standardizer)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    def score(self, batch: ModalityBatch) -> Scores:
        names = self.config.modality_names
        if self.standardizer is not None:
            batch = self.standardizer.apply(batch)
        features, lengths = model_inputs(batch, names, self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                    enabled=self.autocast_dtype is not None):
            out = self.model(features, lengths, mode="flagged")
        c = out.check
        tensors = (out.logits.float().softmax(dim=-1), out.logits.argmax(dim=-1), c.key_missing, c.score.float(),
                   c.key_modality, c.label_full, c.label_pair, out.ensemble_used)
        probs, label, key, score, key_mod, full, pair, ens = (t.cpu().numpy() for t in tensors)
        return Scores(probs.astype(np.float32), label, key, score.astype(np.float32), key_mod, full, pair, ens)
