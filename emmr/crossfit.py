"""Cross-fitting: an honest figure on the very records that models are selected on (dev).

When dev both selects (early stopping, and any setting chosen by its dev scores) and scores, the dev figure is
optimistic. Cross-fitting splits dev by video into two halves; the models selected on one half score the
other, then the halves swap. Pooled, every dev record is scored by a model whose selection never saw it (or
any record of its video), with the same evaluation masks as the dev figure, so the two figures compare
directly. Training data and everything else stay the same. On real data the key-missing flag is scored against
the key truth of the frozen full-modality network trained beside the models that score the record.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.evaluate import aggregate, evaluate
from emmr.missing import seeded_rng
from emmr.scorer import Scorer, Scores
from emmr.train import TrainConfig

log = logging.getLogger(__name__)


def video_halves(ids: np.ndarray, video_of: dict[str, str], seed: int) -> np.ndarray:
    """(N,) int: which half (0 or 1) each record is in; whole videos, about half of the records each, by seed."""
    unknown = [i for i in ids if i not in video_of]
    if unknown:
        raise ValueError(f"record {unknown[0]!r}: its video is unknown ({len(unknown)} records), so it cannot be "
                         f"cross-fitted by video")
    videos = np.asarray([video_of[i] for i in ids], dtype=object).astype(str)
    uniq, inverse, counts = np.unique(videos, return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        raise ValueError(f"cross-fitting by video needs at least two videos, got {len(uniq)}")
    order = seeded_rng(seed, 23).permutation(len(uniq))
    cum = np.cumsum(counts[order])
    first = int(np.clip(np.argmin(np.abs(cum - cum[-1] / 2)) + 1, 1, len(uniq) - 1))  # videos in half 0
    half = np.ones(len(uniq), dtype=np.int64)
    half[order[:first]] = 0
    return half[inverse.reshape(-1)]


def _crossed_truth(dev: ModalityBatch, dev_table, half: np.ndarray, trained, model_cfg: ModelConfig,
                   cfg: TrainConfig) -> np.ndarray | None:
    """The key truth of each record from the frozen teacher of the models that score it (the other half's)."""
    from emmr.compare import evaluation_truth

    parts = {}
    for h in (0, 1):
        rows = np.flatnonzero(half == h)
        parts[h] = evaluation_truth(dev_table.take(rows), trained[1 - h], dev.take(rows), model_cfg.modality_names,
                                    torch.device(cfg.device))
        if parts[h] is None:
            return None
    truth = np.zeros((len(dev), len(model_cfg.modalities)), dtype=bool)
    for h, part in parts.items():
        truth[half == h] = part
    return truth


class CrossFitScorer:
    """Scores each record with the model selected on the *other* half: scorers[h] was selected on half h."""

    def __init__(self, scorers: tuple[Scorer, Scorer], half_of: dict[str, int]):
        self.scorers, self.half_of = scorers, half_of
        self.meta = {**scorers[0].meta, "model_version": "+".join(s.version for s in scorers), "cross_fitted": True}

    @property
    def config(self) -> ModelConfig:
        return self.scorers[0].config

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    def score(self, batch: ModalityBatch) -> Scores:
        half = np.array([self.half_of[i] for i in batch.ids], dtype=np.int64)
        parts = {h: np.flatnonzero(half == h) for h in (0, 1)}
        scored = {h: self.scorers[1 - h].score(batch.take(rows)) for h, rows in parts.items() if len(rows)}
        fields = {}
        for f in Scores.__dataclass_fields__:
            sample = getattr(next(iter(scored.values())), f)
            out = np.empty((len(batch), *sample.shape[1:]), dtype=sample.dtype)
            for h, s in scored.items():
                out[parts[h]] = getattr(s, f)
            fields[f] = out
        return Scores(**fields)


def cross_fitted(train: ModalityBatch, dev: ModalityBatch, dev_table, video_of: dict[str, str], model_cfg: ModelConfig,
                 train_cfg: TrainConfig, methods: list[str], seeds: int, rates, out_dir: str | None = None,
                 progress: bool = False, first_seed: int = 0) -> dict[str, dict]:
    """Like emmr.compare.compare with --val = --test = dev, cross-fitted: -> method -> evaluate()-shaped results
    whose runs span the seeds first_seed .. first_seed + seeds - 1.

    Per seed, the halves are re-drawn (so the spread over seeds includes the choice of halves), one frozen
    full-modality network is trained per half, and every method is trained twice, once selected on each half.
    """
    from emmr.compare import train_methods, training_record

    runs: dict[str, list] = {m: [] for m in methods}
    training: dict[str, list] = {m: [] for m in methods}
    for seed in range(first_seed, first_seed + seeds):
        cfg = replace(train_cfg, seed=seed)
        half = video_halves(dev.ids, video_of, seed)
        half_of = dict(zip(dev.ids.tolist(), half.tolist()))
        trained = [train_methods(train, dev.take(np.flatnonzero(half == h)), model_cfg, cfg, methods, progress,
                                 out_dir, tag=f"-half{h}") for h in (0, 1)]
        truth = _crossed_truth(dev, dev_table, half, trained, model_cfg, cfg)
        for method in methods:
            scorer = CrossFitScorer((trained[0].scorers[method][0], trained[1].scorers[method][0]), half_of)
            res = evaluate(scorer, dev, dev_table, rates=rates, seeds=[seed], truth=truth)
            runs[method] += res["runs"]
            training[method] += [training_record(seed, trained[h].scorers[method][1], half=h) for h in (0, 1)]
            log.info("seed %d %s cross-fitted (halves of %d and %d records): accuracy by rate %s", seed, method,
                     int((half == 0).sum()), int((half == 1).sum()),
                     ", ".join(f"{r} {s['accuracy']['mean']:.4f}" for r, s in res["by_rate"].items()))
    return {m: {"runs": r, "by_rate": aggregate(r), "training": training[m]} for m, r in runs.items()}
