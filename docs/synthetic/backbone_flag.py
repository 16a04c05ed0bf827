"""Train the teacher and EMMR's backbone (stage 1, which is all the flag depends on) with chosen training settings
and score the flag's AUROC against the generator's key truth, beside the oracle's: the development check behind
the `small` preset's training settings (docs/synthetic.md, "Averaged weights"). Development data only.

Settings are the `small` preset's (emmr/config.py PRESET_TRAINING) with `--set key=value` overrides (fields of
emmr.train.TrainConfig). One JSON line per run: the flag's AUROC averaged over rates 0.1-0.5 on the records of
`--data`/test missing one modality (the protocol's masks for the seed), the oracle's on the same records, their
ratio, and the accuracy on records missing a modality at rate 0.3.

  python docs/synthetic/backbone_flag.py --data runs/dev --seed 0 --set weight_average=0 --set select_metric=macro_f1
  python docs/synthetic/backbone_flag.py --data runs/dev --seed 0        # the preset as it is
"""
import argparse
import json
import time

import numpy as np
import torch
import yaml

from emmr.batch import load_records
from emmr.compare import train_methods
from emmr.dataspec import data_spec
from emmr.evaluate import evaluate
from emmr.settings import resolve

RATES = [0.1, 0.2, 0.3, 0.4, 0.5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with train, val and test from `emmr synth`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field (YAML value)")
    a = p.parse_args()
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    model_cfg, train_cfg = resolve("small", None, "emmr", {**overrides, "seed": a.seed}, data_spec(f"{a.data}/train"))
    load = lambda split: load_records(f"{a.data}/{split}", model_cfg.modalities, model_cfg.num_classes)  # noqa: E731
    (train, _), (val, _), (test, table) = load("train"), load("val"), load("test")
    started = time.perf_counter()
    scorer, _ = train_methods(train, val, model_cfg, train_cfg, ["tf"]).scorers["tf"]
    by_rate = evaluate(scorer, test, table, RATES, [a.seed])["by_rate"]
    over_rates = lambda metric: float(np.mean([by_rate[f"{r:g}"][metric]["mean"] for r in RATES]))  # noqa: E731
    flag, oracle = over_rates("flag_auroc"), over_rates("ceiling_flag_auroc")
    print(json.dumps({"seed": a.seed, "set": overrides, "flag_auroc": flag, "oracle_auroc": oracle,
                      "ratio": flag / oracle,
                      "accuracy_missing_0.3": by_rate["0.3"]["accuracy_missing"]["mean"],
                      "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
