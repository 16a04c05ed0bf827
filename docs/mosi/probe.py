"""Linear probes on the converted CMU-MOSI utterance features: fit on train, score on VALIDATION only.

How much each modality (and pair) says about the label on its own, before any EMMR model: a logistic
regression on standardised features (Adam, 300 full-batch steps, weight decay 1e-3, seed 0).

  python docs/mosi/probe.py --data runs/mosi --out docs/mosi/probe.json
"""
import argparse
import itertools
import json

import numpy as np
import torch

from emmr.batch import load_records
from emmr.config import preset

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data", required=True, help="output folder of `emmr convert mosi-utterance-csv`")
p.add_argument("--out", required=True)
args = p.parse_args()
cfg = preset("mosi")
tr, _ = load_records(f"{args.data}/train", cfg.modalities, cfg.num_classes)
va, _ = load_records(f"{args.data}/dev", cfg.modalities, cfg.num_classes)
out = {"train_records": len(tr), "val_records": len(va), "probes": {}}
names = list(cfg.modality_names)
for k in (1, 2, 3):
    for combo in itertools.combinations(names, k):
        torch.manual_seed(0)
        x = np.concatenate([tr.features[n][:, 0] for n in combo], 1)
        xv = np.concatenate([va.features[n][:, 0] for n in combo], 1)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x, xv = torch.tensor((x - mu) / sd), torch.tensor((xv - mu) / sd)
        y = torch.tensor(tr.labels)
        lin = torch.nn.Linear(x.shape[1], cfg.num_classes)
        opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(x), y).backward()
            opt.step()
        with torch.no_grad():
            train_acc = float((lin(x).argmax(1) == y).float().mean())
            val_acc = float((lin(xv).argmax(1).numpy() == va.labels).mean())
        out["probes"]["+".join(combo)] = {"train_accuracy": train_acc, "val_accuracy": val_acc}
        print(f"{'+'.join(combo):25s} train {train_acc:.3f}  val {val_acc:.3f}")
with open(args.out, "w") as fh:
    json.dump(out, fh, indent=1)
