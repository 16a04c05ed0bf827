"""Write synthetic input v1 Parquet with planted key modalities and their ground truth.

The generative model is described in emmr/synth.py and the README. Example:
  emmr synth --out data/train --records 1000 --seed 1 --preset small --missing-rate 0.3
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pyarrow.parquet as pq

from emmr import synth
from emmr.config import PRESETS, preset

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (part-00000.parquet is written there)")
    p.add_argument("--records", type=int, required=True, help="number of records")
    p.add_argument("--seed", type=int, default=0, help="seed of the records (use different seeds per split)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="modality dimensions and lengths")
    p.add_argument("--classes", type=int, choices=(2, 3), default=None, help="classes (default: the preset's)")
    p.add_argument("--missing-rate", type=float, default=0.0, help="fraction of records that miss one modality")
    p.add_argument("--shared", type=float, default=0.5,
                   help="weight a of the shared linear factor in each modality's evidence (default: 0.5)")
    p.add_argument("--nonlinear", type=float, default=0.7,
                   help="weight b of each modality's nonlinear function of the shared content factors (default: 0.7); "
                        "the private part has weight sqrt(1 - a^2 - b^2)")
    p.add_argument("--noise", type=float, default=0.5, help="standard deviation of the feature noise (default: 0.5)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the fixed world (keep it equal across splits)")


def run(args: argparse.Namespace) -> int:
    config = preset(args.preset)
    classes = args.classes or config.num_classes
    params = synth.SynthParams(records=args.records, seed=args.seed, classes=classes, missing_rate=args.missing_rate,
                               shared=args.shared, nonlinear=args.nonlinear, noise=args.noise, world_seed=args.world_seed)
    path = synth.write(params, config.modalities, args.out)
    table = pq.read_table(path, columns=["label", "dropped"] + [f"key_{m}" for m in config.modality_names])
    keys = np.stack([table.column(f"key_{m}").to_numpy() for m in config.modality_names], axis=1)
    log.info("wrote %d records to %s: missing %.3f, labels %s, key modality in %.3f of records (%s)", table.num_rows, path,
             table.column("dropped").is_valid().to_numpy(zero_copy_only=False).mean(),
             np.bincount(table.column("label").to_numpy(), minlength=classes).tolist(), keys.any(axis=1).mean(),
             ", ".join(f"{m} {keys[:, j].mean():.3f}" for j, m in enumerate(config.modality_names)))
    return 0
