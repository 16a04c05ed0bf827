"""Train EMMR (or a baseline) on a folder of input v1 Parquet and write a checkpoint directory.

The full-modality network is trained first on the complete records and frozen; then the model trains with
simulated missingness (re-drawn each epoch), selected on validation only.

The modalities and label names come from the data (dataset.json of `emmr convert`, else the Parquet schema);
without --preset, the preset that fits the data is used, else the `small` sizes. --data may be a converted
data set's folder: it trains on its `train` split and validates on `dev` (or `val`). Examples:
  emmr train --data data/mosi --out runs/mosi-emmr
  emmr train --data data/train --val data/val --out runs/ckpt --preset small --epochs 20
"""

from __future__ import annotations

import argparse
import json
import logging

from emmr.commands.options import PRESET_HELP, add_training_arguments, check_output_folder
from emmr.config import PRESETS
from emmr.methods import METHODS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="folder (searched recursively), glob or file of input v1 Parquet with labels, or a converted "
                        "data set's folder (OUT of emmr convert: trains on its train split)")
    p.add_argument("--out", required=True, help="checkpoint directory to write; an existing checkpoint is kept unless --force")
    p.add_argument("--force", action="store_true", help="overwrite the checkpoint at --out if there is one")
    p.add_argument("--val", help="validation folder (default: a converted data set's dev or val split; else a split "
                                 "carved from --data by seed)")
    p.add_argument("--config", help="YAML with `model:` and `train:` sections (any field of ModelConfig, TrainConfig)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=PRESET_HELP)
    p.add_argument("--method", choices=sorted(METHODS), help="default: emmr (or the YAML's train.method)")
    add_training_arguments(p, ("epochs", "teacher_epochs", "batch_size", "lr", "seed", "missing_rate", "patience",
                               "device"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, usually one per core)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress within an epoch (a bar on a terminal, else a log line every 10 s); epochs are still logged")


def run(args: argparse.Namespace) -> int:
    import torch  # heavy imports here, so that `emmr --help` and the other commands start fast

    from emmr import checkpoint
    from emmr.batch import load_records
    from emmr.dataspec import data_spec, splits_of
    from emmr.fingerprint import fingerprint
    from emmr.scorer import resolve_device
    from emmr.settings import resolve
    from emmr.standardize import prepare
    from emmr.train import split_validation, train_emmr

    check_output_folder(args.out, "--out")
    if checkpoint.exists(args.out) and not args.force:
        raise ValueError(f"--out {args.out!r} holds a checkpoint already: pass --force to overwrite it, "
                         "or choose another folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "batch_size": args.batch_size,
                 "lr": args.lr, "seed": args.seed, "missing_rate": args.missing_rate, "patience": args.patience,
                 "device": args.device}
    train_path, val_path = splits_of(args.data, args.val)
    model_cfg, train_cfg = resolve(args.preset, args.config, args.method, overrides, data_spec(train_path))
    resolve_device(train_cfg.device)  # cuda without a GPU fails now, not after the data are loaded
    data, _ = load_records(train_path, model_cfg.modalities, model_cfg.num_classes)
    if val_path:
        train, val = data, load_records(val_path, model_cfg.modalities, model_cfg.num_classes)[0]
    else:
        train, val = split_validation(data, train_cfg.val_fraction, train_cfg.seed)
    log.info("training %s on %d records of %s, validating on %d (%s; %s)", train_cfg.method, len(train), train_path,
             len(val), val_path or "carved from the training data",
             ", ".join(f"{k}={v}" for k, v in sorted(train_cfg.__dict__.items())))
    train, val, standardizer = prepare(train, val, train_cfg.standardize)  # saved with the weights
    result = train_emmr(train, val, model_cfg, train_cfg, progress=not args.no_progress)
    metrics = {**result.metrics, "validation_data": val_path or "carved from the training data", "history": result.history}
    version = checkpoint.save(args.out, result.model, method=train_cfg.method, train_config=train_cfg.__dict__,
                              metrics=metrics, data_fingerprint=fingerprint(train_path, len(data)), teacher=result.teacher,
                              standardizer=standardizer)
    log.info("wrote checkpoint %s (model version %s): validation %s", args.out, version,
             json.dumps(result.metrics["validation"]))
    return 0
