"""Scoring API used by the pipeline and the evaluation: a loaded checkpoint that turns a ModalityBatch into
predictions with their key-missing flags (numpy in, numpy out; torch stays inside)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from emmr import checkpoint
from emmr.batch import ModalityBatch, length_buckets
from emmr.config import ModelConfig
from emmr.nn.emmr import EMMR
from emmr.standardize import Standardizer
from emmr.tensors import DeviceInputs


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


# Rows per length bucket (emmr.batch.length_buckets): small on a CPU, where a bucket's activations then stay in cache
# (paper preset: 8-16 rows scored 1.3x faster than 64, docs/performance.md), large on a GPU, which wants big batches.
BUCKET_ROWS = {"cpu": 16, "cuda": 1024}


class Scorer:
    """A model and what it needs to score: the device, autocast, the training statistics. `score` computes only the
    steps records have: it sorts a batch into buckets of alike lengths and trims each to its longest record
    (emmr/nn/layout.py); `score(batch, trim=False)` runs the whole batch at every modality's max_len, as before."""

    def __init__(self, model: EMMR, meta: dict, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 load_seconds: float = 0.0, standardizer: Standardizer | None = None, bucket_rows: int | None = None):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.standardizer = standardizer  # the training statistics the weights expect (emmr/standardize.py)
        self.autocast_dtype = autocast_dtype
        self.load_seconds = load_seconds
        self.bucket_rows = bucket_rows or BUCKET_ROWS.get(device.type, 256)
        self._inputs = DeviceInputs(device)
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the standardizer's, on the device

    @classmethod
    def load(cls, path: str, device: str = "cpu", autocast: str | None = None,
             bucket_rows: int | None = None) -> "Scorer":
        dev = resolve_device(device)
        started = time.perf_counter()
        model, meta = checkpoint.load(path, dev)
        standardizer = checkpoint.load_standardizer(path, meta)
        dtype = {None: None, "none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[autocast]
        return cls(model, meta, dev, dtype, load_seconds=time.perf_counter() - started, standardizer=standardizer,
                   bucket_rows=bucket_rows)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    def score(self, batch: ModalityBatch, trim: bool = True) -> Scores:
        """Predictions and flags for every record of `batch`, in its order. trim=False: the whole batch in one call
        at every modality's max_len (the path before length buckets, kept for comparison)."""
        if not len(batch):
            return _empty_scores(0, self.config.num_classes)
        names = self.config.modality_names
        features, lengths = self._inputs.put(batch, names)
        if self.standardizer is not None:
            features = [self._standardize(x, lengths[:, j], n) for j, (x, n) in enumerate(zip(features, names))]
        if trim:
            buckets = length_buckets(np.stack([batch.lengths[n] for n in names], axis=1),
                                     tuple(m.max_len for m in self.config.modalities), self.bucket_rows)
            parts = [self._inputs.bucket(features, lengths, b) for b in buckets]
            order = np.concatenate([b.rows for b in buckets])
        else:
            parts, order = [(features, lengths)], None
        outs = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                    enabled=self.autocast_dtype is not None):
            for part_features, part_lengths in parts:
                out = self.model(part_features, part_lengths, mode="flagged")
                c = out.check
                outs.append((out.logits.float().softmax(dim=-1), out.logits.argmax(dim=-1), c.key_missing,
                             c.score.float(), c.key_modality, c.label_full, c.label_pair, out.ensemble_used))
        columns = [torch.cat(col) if len(outs) > 1 else col[0] for col in zip(*outs)]
        probs, label, key, score, key_mod, full, pair, ens = (t.cpu().numpy() for t in columns)  # waits for the device
        scores = Scores(probs.astype(np.float32), label, key, score.astype(np.float32), key_mod, full, pair, ens)
        if order is None:
            return scores
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # bucket order -> the batch's order
        return Scores(**{f: getattr(scores, f)[back] for f in SCORE_FIELDS})

    def _standardize(self, x: torch.Tensor, lengths: torch.Tensor, name: str) -> torch.Tensor:
        """emmr/standardize.py on the device: observed steps shifted and scaled, padding and missing stay zero."""
        if name not in self._stats:
            self._stats[name] = tuple(torch.from_numpy(a).to(self.device)
                                      for a in (self.standardizer.mean[name], self.standardizer.std[name]))
        mean, std = self._stats[name]
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[..., None]  # (B, L, 1)
        return torch.where(valid, (x - mean) / std, torch.zeros((), dtype=x.dtype, device=x.device))


SCORE_FIELDS = tuple(Scores.__dataclass_fields__)


def _empty_scores(n: int, classes: int) -> Scores:
    return Scores(np.zeros((n, classes), np.float32), np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.float32),
                  np.full(n, -1, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64), np.zeros(n, bool))
