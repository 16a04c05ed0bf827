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
from emmr.dataspec import data_spec
from emmr.evaluate import protocol_masks
from emmr.metrics import auroc
from emmr.oracle import SynthTruth, oracle_scores
from emmr.settings import resolve
from emmr.tensors import model_inputs
from emmr.train import train_emmr

RATES = [0.1, 0.2, 0.3, 0.4, 0.5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder with train, val and test from `emmr synth`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field (YAML value)")
    a = p.parse_args()
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    model_cfg, train_cfg = resolve("small", None, "tf", {**overrides, "seed": a.seed}, data_spec(f"{a.data}/train"))
    names = model_cfg.modality_names
    load = lambda split: load_records(f"{a.data}/{split}", model_cfg.modalities, model_cfg.num_classes)  # noqa: E731
    (train, _), (val, _), (test, table) = load("train"), load("val"), load("test")
    started = time.perf_counter()
    model = train_emmr(train, val, model_cfg, train_cfg, progress=False).model.eval()
    truth = SynthTruth.from_table(table, names)
    flag, oracle, accuracy = [], [], None
    for rate, _, drop in protocol_masks(test.present(), RATES, [a.seed]):
        masked = test.drop(drop)
        missing = ~masked.present()
        single = missing.sum(axis=1) == 1
        with torch.inference_mode():
            out = model(*model_inputs(masked, names, torch.device("cpu")))
        key = truth.key[np.arange(len(test)), missing.argmax(axis=1)] & single
        flag.append(auroc(key[single], out.check.score.numpy()[single]))
        oracle.append(auroc(key[single], oracle_scores(truth, missing).key_missing_score[single]))
        if rate == 0.3:
            rows = missing.any(axis=1)
            accuracy = float((out.logits.argmax(dim=1).numpy() == test.labels)[rows].mean())
    print(json.dumps({"seed": a.seed, "set": overrides, "flag_auroc": float(np.mean(flag)),
                      "oracle_auroc": float(np.mean(oracle)), "ratio": float(np.mean(flag) / np.mean(oracle)),
                      "accuracy_missing_0.3": accuracy, "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
