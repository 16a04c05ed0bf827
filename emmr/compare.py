"""The comparison table: every method of emmr/methods.py trained by the same loop on the same data, per
seed, and evaluated with the same protocol and masks. Seeds vary the validation split, the initialisation,
the training masks and the evaluation masks; per seed, one frozen full-modality network serves every method, and
methods with the same first stage share it (EMMR's backbone is the `tf` model of the same seed, so the two differ
only where EMMR's check fires). On data without key truth columns (real data), the flag is scored against that
frozen network's own key modalities of the complete test records (emmr/keytruth.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from emmr import checkpoint
from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.evaluate import aggregate, evaluate, key_truth
from emmr.keytruth import teacher_truth
from emmr.methods import apply_method
from emmr.scorer import Scorer
from emmr.nn.teacher import FullModalityNetwork
from emmr.standardize import Standardizer, prepare
from emmr.train import TrainConfig, split_validation, train_emmr, train_teacher

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """What train_methods made: method -> (scorer, validation metrics), and the frozen full-modality network."""

    scorers: dict[str, tuple[Scorer, dict]]
    teacher: FullModalityNetwork
    standardizer: Standardizer | None

    def key_truth(self, batch: ModalityBatch, names: tuple[str, ...], device: torch.device) -> np.ndarray | None:
        """(N, M) bool, the teacher's key modalities of complete records (emmr/keytruth.py); None if any is incomplete."""
        if not batch.present().all():
            return None
        inputs = self.standardizer.apply(batch) if self.standardizer is not None else batch
        return teacher_truth(self.teacher, inputs, names, device).key


def evaluation_truth(table, trained: "Trained", batch: ModalityBatch, names: tuple[str, ...], device) -> np.ndarray | None:
    """The key truth to score flags against: the data's own (`key_<modality>` columns of synthetic data), else the
    frozen teacher's on complete records (real data: every record complete, missingness simulated)."""
    given = key_truth(table, names)
    return given if given is not None else trained.key_truth(batch, names, device)


def train_methods(train: ModalityBatch, val: ModalityBatch, model_cfg: ModelConfig, cfg: TrainConfig, methods: list[str],
                  progress: bool = False, save_dir: str | None = None, tag: str = "") -> Trained:
    """One frozen full-modality network, then every method, each selected on `val`."""
    train, val, standardizer = prepare(train, val, cfg.standardize)  # the scorers apply it to what they score
    teacher, teacher_best, _ = train_teacher(train, val, model_cfg, cfg, progress)
    out, backbones = {}, {}
    for method in methods:
        m_cfg, t_cfg = apply_method(method, model_cfg, cfg)
        key = (m_cfg.backbone_only(), t_cfg.backbone_key())
        result = train_emmr(train, val, m_cfg, t_cfg, progress, teacher=(teacher, teacher_best), backbone=backbones.get(key))
        backbones.setdefault(key, result.backbone)
        meta = {"model_version": f"{method}-seed{cfg.seed}{tag}", "method": method}
        if save_dir:
            path = os.path.join(save_dir, "checkpoints", f"{method}-seed{cfg.seed}{tag}")
            meta["model_version"] = checkpoint.save(path, result.model, method=method, train_config=t_cfg.__dict__,
                                                    metrics=result.metrics, data_fingerprint={}, teacher=teacher,
                                                    standardizer=standardizer)
        out[method] = (Scorer(result.model, meta, torch.device(t_cfg.device), standardizer=standardizer), result.metrics)
    return Trained(out, teacher, standardizer)


def training_record(seed: int, metrics: dict, **where) -> dict:
    """What a comparison keeps of one training: its seed (and, cross-fitted, its half) and, for a method with an
    ensemble, the gate's verdict (emmr/train.py keep_ensemble; None for a single-member method)."""
    return {"seed": seed, **where, "ensemble": metrics.get("ensemble")}


def compare(train: ModalityBatch, val: ModalityBatch | None, test: ModalityBatch, test_table, model_cfg: ModelConfig,
            train_cfg: TrainConfig, methods: list[str], seeds: int, rates, out_dir: str | None = None,
            progress: bool = False, first_seed: int = 0) -> dict[str, dict]:
    """-> method -> evaluate()-shaped results whose runs span the seeds first_seed .. first_seed + seeds - 1."""
    runs: dict[str, list] = {m: [] for m in methods}
    training: dict[str, list] = {m: [] for m in methods}
    for seed in range(first_seed, first_seed + seeds):
        cfg = replace(train_cfg, seed=seed)
        tr, va = (train, val) if val is not None else split_validation(train, cfg.val_fraction, seed)
        trained = train_methods(tr, va, model_cfg, cfg, methods, progress, out_dir)
        truth = evaluation_truth(test_table, trained, test, model_cfg.modality_names, torch.device(cfg.device))
        for method, (scorer, metrics) in trained.scorers.items():
            res = evaluate(scorer, test, test_table, rates=rates, seeds=[seed], truth=truth)
            runs[method] += res["runs"]
            training[method].append(training_record(seed, metrics))
            at = res["by_rate"][f"{max(rates):g}"]
            log.info("seed %d %s: validation %s; test at rate %g: accuracy %.4f, macro-F1 %.4f", seed, method,
                     metrics["validation"], max(rates), at["accuracy"]["mean"], at["macro_f1"]["mean"])
    return {m: {"runs": r, "by_rate": aggregate(r), "training": training[m]} for m, r in runs.items()}
