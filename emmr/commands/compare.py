"""Train every method (EMMR, TF, AE, MMIN, max and average fusion, no forward loss, no backward loss) with one
training loop and evaluate them with one protocol: the comparison table, plots and metrics.json.

Examples (minutes on 2 CPU cores):
  emmr compare --train data/train --test data/test --out runs/compare --seeds 5 --epochs 15
  emmr compare --train data/mosi/train --val data/mosi/dev --cross-fit --out runs/mosi-compare

With --val and no --test, the table is on the validation data (dev figures: selected and scored on the same
records, so optimistic); --cross-fit adds the honest counterpart in OUT/cross-fitted/: the validation data
split by video into two halves, models selected on one half score the other, then swap (emmr/crossfit.py).
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
    p.add_argument("--test", help="labelled input v1 Parquet for the table, never used for selection (default: --val, "
                                  "which makes the table dev figures)")
    p.add_argument("--cross-fit", action="store_true",
                   help="also the cross-fitted figures on --val (a converted split: its split.json gives the videos)")
    p.add_argument("--out", required=True, help="folder for the table, plots, metrics.json and checkpoints")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=PRESET_HELP)
    p.add_argument("--config", help="YAML with `model:` and `train:` sections (any field of ModelConfig, TrainConfig)")
    add_training_arguments(p, ("epochs", "teacher_epochs", "batch_size", "lr", "missing_rate", "patience", "device"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, usually one per core)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the seeds are first-seed .. first-seed + seeds - 1 (default: 0), so that one comparison can be "
                        "run as several processes")
    add_protocol_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from emmr.batch import load_records
    from emmr.compare import compare
    from emmr.convert import record_videos
    from emmr.crossfit import cross_fitted
    from emmr.dataspec import data_spec
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
    model_cfg, train_cfg = resolve(args.preset, args.config, "emmr", overrides, data_spec(args.train))
    resolve_device(train_cfg.device)
    load = lambda path: load_records(path, model_cfg.modalities, model_cfg.num_classes)  # noqa: E731
    if not (args.test or args.val):
        raise ValueError("give --test, or --val to report on the validation data")
    if args.cross_fit and not args.val:
        raise ValueError("--cross-fit needs --val (the data to select on and cross-fit over)")
    test_path = args.test or args.val
    video_of = record_videos(args.val) if args.cross_fit else None
    train, _ = load(args.train)
    val, val_table = load(args.val) if args.val else (None, None)
    test, test_table = load(test_path)
    rates = parse_rates(args.missing_rates)
    extra = {"train": args.train, "val": args.val, "test": test_path, "seeds": args.seeds, "rates": rates,
             "model": model_cfg.to_dict(), "train_config": train_cfg.__dict__}
    results = compare(train, val, test, test_table, model_cfg, train_cfg, methods, args.seeds, rates, args.out,
                      first_seed=args.first_seed)
    kind = "dev figures: selected and scored on" if test_path == args.val else "on"
    paths = write_all(results, args.out, f"Comparison ({kind} {test_path})", list(model_cfg.label_names), extra=extra)
    if args.cross_fit:
        crossed = cross_fitted(train, val, val_table, video_of, model_cfg, train_cfg, methods, args.seeds, rates, args.out,
                               first_seed=args.first_seed)
        folder = os.path.join(args.out, "cross-fitted")
        paths += [os.path.join("cross-fitted", p) for p in write_all(
            crossed, folder, f"Comparison, cross-fitted on {args.val} (select on one half by video, score the other)",
            list(model_cfg.label_names), extra={**extra, "test": args.val, "cross_fitted": True})]
    note = already_missing_note(results)
    if note:
        log.warning("%s", note)
    log.info("wrote %s", ", ".join(os.path.join(args.out, p) for p in paths))
    return 0
