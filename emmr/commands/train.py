"""Train EMMR (or a baseline) on a folder of input v1 Parquet and write a checkpoint directory.

The full-modality network is trained first on the complete records and frozen; then the model trains with
simulated missingness (re-drawn each epoch), selected on validation only. Example:
  emmr train --data data/train --out runs/ckpt --preset small --epochs 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from emmr.config import PRESETS
from emmr.methods import METHODS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder (or glob) of input v1 Parquet with labels")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--val", help="validation folder; without it a split is carved from --data by seed")
    p.add_argument("--config", help="YAML with `model:` and `train:` sections")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--method", choices=sorted(METHODS), help="default: emmr (or the YAML's train.method)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--missing-rate", type=float, help="simulated missing rate in training (default 0.3)")
    p.add_argument("--patience", type=int)
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch  # heavy imports here, so that `emmr --help` and the other commands start fast

    from emmr import checkpoint
    from emmr.batch import load_records
    from emmr.fingerprint import fingerprint
    from emmr.settings import resolve
    from emmr.train import split_validation, train_emmr

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "batch_size": args.batch_size,
                 "lr": args.lr, "seed": args.seed, "missing_rate": args.missing_rate, "patience": args.patience,
                 "device": args.device}
    model_cfg, train_cfg = resolve(args.preset, args.config, args.method, overrides)
    data, _ = load_records(args.data, model_cfg.modalities, model_cfg.num_classes)
    if args.val:
        train, val = data, load_records(args.val, model_cfg.modalities, model_cfg.num_classes)[0]
    else:
        train, val = split_validation(data, train_cfg.val_fraction, train_cfg.seed)
    log.info("training %s on %d records, validating on %d (%s)", train_cfg.method, len(train), len(val),
             ", ".join(f"{k}={v}" for k, v in sorted(train_cfg.__dict__.items())))
    result = train_emmr(train, val, model_cfg, train_cfg, progress=not args.no_progress and sys.stderr.isatty())
    metrics = {**result.metrics, "history": result.history}
    version = checkpoint.save(args.out, result.model, method=train_cfg.method, train_config=train_cfg.__dict__,
                              metrics=metrics, data_fingerprint=fingerprint(args.data, len(data)), teacher=result.teacher)
    log.info("wrote checkpoint %s (model version %s): validation %s", args.out, version,
             json.dumps(result.metrics["validation"]))
    return 0
