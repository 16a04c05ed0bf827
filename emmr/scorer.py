"""Scoring API used by the pipeline and the evaluation: a loaded checkpoint that turns a ModalityBatch into
predictions with their key-missing flags (numpy in, numpy out; torch stays inside)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from emmr import checkpoint
from emmr.batch import Bucket, ModalityBatch, length_buckets
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


# The cost model that chooses length buckets (Scorer.plan): a model call costs CALL_SECONDS (Python, op dispatch,
# kernel launches) plus its FLOPs at FLOP_RATE. Rough sustained figures (docs/performance.md): on a CPU thread here a
# paper-size forward runs at about 50 GFLOP/s and a small model's call costs milliseconds whatever its size; on a GPU
# a forward launches some hundreds of kernels. Small models then score a batch in one call, large ones in buckets of
# a few records (CPU) or of thousands (GPU), sorted by length.
CALL_SECONDS = {"cpu": 5e-3, "cuda": 5e-3}
FLOP_RATE = {"cpu": 50e9, "cuda": 30e12}


def flops_per_record(config: ModelConfig, slots: np.ndarray) -> np.ndarray:
    """About the FLOPs of scoring one record of `slots` slots (an array of slot counts): per slot, the attention
    blocks' projections and the TF member's feed-forward layer (a few passes each), and per pair of slots, the
    attention scores of two full-sequence blocks. For the planner's comparisons, not for reporting (the benchmarks
    count FLOPs with torch's counter)."""
    h, ffn = config.hidden, config.ffn
    return 2.0 * (8 * h * h + 2 * h * ffn) * slots + 8.0 * h * slots.astype(np.float64) ** 2


class Scorer:
    """A model and what it needs to score: the device, autocast, the training statistics. `score` computes only the
    steps records have: it sorts a batch into buckets of alike lengths and trims each to its longest record
    (emmr/nn/layout.py), as many buckets as pay for their calls (`plan`); `score(batch, trim=False)` runs the whole
    batch at every modality's max_len, as before."""

    def __init__(self, model: EMMR, meta: dict, device: torch.device, autocast_dtype: torch.dtype | None = None,
                 load_seconds: float = 0.0, standardizer: Standardizer | None = None, bucket_rows: int | None = None):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.standardizer = standardizer  # the training statistics the weights expect (emmr/standardize.py)
        self.autocast_dtype = autocast_dtype
        self.load_seconds = load_seconds
        self.bucket_rows = bucket_rows  # None: chosen per batch by the cost model (plan)
        self.call_seconds, self.flop_rate = CALL_SECONDS.get(device.type, 5e-3), FLOP_RATE.get(device.type, 50e9)
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
            buckets = self.plan(np.stack([batch.lengths[n] for n in names], axis=1))
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

    def plan(self, lengths: np.ndarray) -> list[Bucket]:
        """The length buckets of a batch (lengths (B, M)): `bucket_rows` rows each when set, else the cheapest plan by
        the cost model among buckets of 1, 2, 4, ... rows and one bucket of the whole batch."""
        max_lens = tuple(m.max_len for m in self.config.modalities)
        if self.bucket_rows:
            return length_buckets(lengths, max_lens, self.bucket_rows)
        candidates = [length_buckets(lengths, max_lens, 1 << k) for k in range(max(1, len(lengths) - 1).bit_length())]
        candidates.append([Bucket(np.arange(len(lengths)), tuple(
            int(top) if (lengths[:, j] == 0).any() else int(lengths[:, j].max()) for j, top in enumerate(max_lens)))])
        return min(candidates, key=self.plan_seconds)

    def plan_seconds(self, buckets: list[Bucket]) -> float:
        """What the cost model expects a plan to take: a call per bucket, and the FLOPs of its rows at its slots."""
        slots = np.array([sum(b.lens) for b in buckets], dtype=np.float64)
        rows = np.array([len(b.rows) for b in buckets], dtype=np.float64)
        flops = float((rows * flops_per_record(self.config, slots)).sum())
        return len(buckets) * self.call_seconds + flops / self.flop_rate

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
