"""The best possible figures on `emmr synth` data, from the generating model.

Accuracy on all, complete, missing and key-missing records, and the flag's AUROC, precision and recall, at each
missing rate (the same masks as `emmr evaluate`). Every synthetic report shows its figures beside these ceilings.

Example:
  emmr oracle --data data/test --out runs/oracle --missing-rates 0,0.3 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from emmr.commands.options import add_protocol_arguments, parse_rates

log = logging.getLogger(__name__)
SHOWN = ("accuracy", "accuracy_complete", "accuracy_missing", "accuracy_key_missing", "flag_auroc", "flag_rate_missing",
         "flag_precision", "flag_recall")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder (or glob) of Parquet written by `emmr synth`")
    p.add_argument("--out", required=True, help="folder for oracle.json")
    add_protocol_arguments(p)


def run(args: argparse.Namespace) -> int:
    from emmr.batch import read_table
    from emmr.oracle import oracle_protocol

    result = oracle_protocol(read_table(args.data), parse_rates(args.missing_rates), range(args.seeds))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "oracle.json")
    with open(path, "w") as f:
        json.dump({"data": args.data, **result}, f, indent=1)
    for rate, stats in result["by_rate"].items():
        log.info("missing rate %s: %s", rate, ", ".join(f"{k} {stats[k]['mean']:.4f}" for k in SHOWN if k in stats))
    log.info("wrote %s", path)
    return 0
