"""The comparison table: every method of emmr/methods.py trained by the same loop on the same data, per
seed, and evaluated with the same protocol and masks. Seeds vary the validation split, the initialisation,
the training masks and the evaluation masks; per seed, one frozen full-modality network serves every method.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from emmr import checkpoint
from emmr.batch import ModalityBatch
from emmr.config import ModelConfig
from emmr.evaluate import aggregate, evaluate
from emmr.methods import apply_method
from emmr.scorer import Scorer
from emmr.train import TrainConfig, split_validation, train_emmr, train_teacher

log = logging.getLogger(__name__)


def compare(train: ModalityBatch, val: ModalityBatch | None, test: ModalityBatch, test_table, model_cfg: ModelConfig,
            train_cfg: TrainConfig, methods: list[str], seeds: int, rates, out_dir: str | None = None,
            progress: bool = False) -> dict[str, dict]:
    """-> method -> evaluate()-shaped results whose runs span every seed."""
    runs: dict[str, list] = {m: [] for m in methods}
    for seed in range(seeds):
        cfg = replace(train_cfg, seed=seed)
        tr, va = (train, val) if val is not None else split_validation(train, cfg.val_fraction, seed)
        teacher, teacher_best, _ = train_teacher(tr, va, model_cfg, cfg, progress)
        for method in methods:
            m_cfg, t_cfg = apply_method(method, model_cfg, cfg)
            result = train_emmr(tr, va, m_cfg, t_cfg, progress, teacher=(teacher, teacher_best))
            meta = {"model_version": f"{method}-seed{seed}", "method": method}
            if out_dir:
                path = os.path.join(out_dir, "checkpoints", f"{method}-seed{seed}")
                meta["model_version"] = checkpoint.save(path, result.model, method=method, train_config=t_cfg.__dict__,
                                                        metrics=result.metrics, data_fingerprint={}, teacher=teacher)
            scorer = Scorer(result.model, meta, torch.device(t_cfg.device))
            res = evaluate(scorer, test, test_table, rates=rates, seeds=[seed])
            runs[method] += res["runs"]
            at = res["by_rate"][f"{max(rates):g}"]
            log.info("seed %d %s: validation %s; test at rate %g: accuracy %.4f, macro-F1 %.4f", seed, method,
                     result.metrics["validation"], max(rates), at["accuracy"]["mean"], at["macro_f1"]["mean"])
    return {m: {"runs": r, "by_rate": aggregate(r)} for m, r in runs.items()}
