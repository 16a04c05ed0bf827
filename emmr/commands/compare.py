"""Train every method (EMMR, TF, AE, MMIN, max and average fusion, no forward loss, no backward loss) with one
training loop and evaluate them with one protocol: the comparison table, plots and metrics.json.

Example (small synthetic data, minutes on 2 CPU cores):
  emmr compare --train data/train --test data/test --out runs/compare --seeds 5 --epochs 15
"""

from __future__ import annotations

import argparse
import logging
import os

from emmr.commands.options import (PRESET_HELP, add_protocol_arguments, add_training_arguments,
                                   check_output_folder, parse_rates)
from emmr.config import PRESETS
from emmr.methods import METHODS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="labelled input v1 Parquet for training (folder, glob or file)")
    p.add_argument("--val", help="validation data; without it a split is carved from --train per seed")
    p.add_argument("--test", required=True, help="labelled input v1 Parquet for the table (never used for selection)")
    p.add_argument("--out", required=True, help="folder for the table, plots, metrics.json and checkpoints")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help=PRESET_HELP)
    p.add_argument("--config", help="YAML with `model:` and `train:` sections (any field of ModelConfig, TrainConfig)")
    add_training_arguments(p, ("epochs", "teacher_epochs", "batch_size", "lr", "missing_rate", "patience", "device"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, usually one per core)")
    add_protocol_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from emmr.batch import load_records
    from emmr.compare import compare
    from emmr.report import already_missing_note, write_all
    from emmr.scorer import resolve_device
    from emmr.settings import resolve

    check_output_folder(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    overrides = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "batch_size": args.batch_size,
                 "lr": args.lr, "missing_rate": args.missing_rate, "patience": args.patience, "device": args.device}
    model_cfg, train_cfg = resolve(args.preset, args.config, "emmr", overrides)
    resolve_device(train_cfg.device)
    load = lambda path: load_records(path, model_cfg.modalities, model_cfg.num_classes)  # noqa: E731
    train, _ = load(args.train)
    val = load(args.val)[0] if args.val else None
    test, test_table = load(args.test)
    rates = parse_rates(args.missing_rates)
    results = compare(train, val, test, test_table, model_cfg, train_cfg, methods, args.seeds, rates, args.out)
    paths = write_all(results, args.out, f"Comparison on {args.test}", list(model_cfg.label_names),
                      extra={"train": args.train, "val": args.val, "test": args.test, "seeds": args.seeds,
                             "rates": rates, "model": model_cfg.to_dict(), "train_config": train_cfg.__dict__})
    note = already_missing_note(results)
    if note:
        log.warning("%s", note)
    log.info("wrote %s", ", ".join(os.path.join(args.out, p) for p in paths))
    return 0
