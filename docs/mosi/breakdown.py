"""Break the test results of `emmr compare` down further (reporting only: nothing here chose any setting).

Re-scores every checkpoint of the comparison on the test records with the very masks `emmr evaluate` drew
(seeded_rng(seed, 1000 + rate index), emmr/evaluate.py), checks that the overall accuracy equals metrics.json,
and writes, pooled over the missing rates above 0 and the seeds:
- accuracy by which modality was dropped (none, visual, acoustic, text), of the final output (Eq. 13) and of
  the backbone's full head (Eq. 8);
- the key-missing flag: how many records it fired on, and how many of them the final output and the
  backbone's head got right;
- per rate and seed, the correct-record difference of EMMR against each other method (same masks), and over
  the (rate > 0, seed) pairs how often EMMR wins, ties and loses, with a two-sided sign test (ties dropped).

Run it with the code that wrote the checkpoints on PYTHONPATH (the checkpoint format is checked on load);
for the run in docs/results.md that is the snapshot of commit e1bb138 in runs/src:

  PYTHONPATH=runs/src .venv/bin/python docs/mosi/breakdown.py --checkpoints runs/mosi-new/checkpoints \
      --test runs/mosi/test --metrics docs/mosi/metrics.json --out docs/mosi/breakdown.json --threads 1
"""
import argparse
import json
import math

import numpy as np
import torch

from emmr.batch import load_records
from emmr.evaluate import score_all
from emmr.missing import seeded_rng, simulate_missing
from emmr.scorer import Scorer

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--checkpoints", required=True)
p.add_argument("--test", required=True)
p.add_argument("--metrics", required=True)
p.add_argument("--out", required=True)
p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
args = p.parse_args()
torch.set_num_threads(args.threads)

metrics = json.load(open(args.metrics))
rates, seeds, methods = metrics["rates"], metrics["seeds"], list(metrics["methods"])
batch = None
out = {"pooled_over": {"rates": rates[1:], "seeds": seeds}, "methods": {}, "paired_vs_emmr": {},
       "paired_vs_emmr_summary": {}}
correct = {}
for m in methods:
    names = None
    by_mod, flag, mismatches = {}, {"flagged": 0, "final_correct": 0, "backbone_correct": 0}, 0
    for seed in range(seeds):
        sc = Scorer.load(f"{args.checkpoints}/{m}-seed{seed}", "cpu")
        if batch is None:
            batch, _ = load_records(args.test, sc.config.modalities, sc.config.num_classes)
        names = list(sc.config.modality_names)
        y = batch.labels
        for ri, rate in enumerate(rates):
            drop = simulate_missing(batch.present(), rate, seeded_rng(seed, 1000 + ri))
            s = score_all(sc, batch.drop(drop))
            ok, ok_full = s.label_index == y, s.label_full == y
            correct[(m, seed, rate)] = int(ok.sum())
            mismatches += abs(float(ok.mean()) - metrics["methods"][m]["by_rate"][f"{rate:g}"]["accuracy"]["values"][seed]) > 1e-9
            if ri == 0:
                continue
            for j, n in enumerate(names + ["none"]):
                sel = ~drop.any(axis=1) if n == "none" else drop[:, j]
                c = by_mod.setdefault(n, {"records": 0, "final_correct": 0, "backbone_correct": 0})
                c["records"] += int(sel.sum()); c["final_correct"] += int(ok[sel].sum()); c["backbone_correct"] += int(ok_full[sel].sum())
            f = s.key_missing
            flag["flagged"] += int(f.sum()); flag["final_correct"] += int(ok[f].sum()); flag["backbone_correct"] += int(ok_full[f].sum())
            flag.setdefault("flagged_by_dropped", {n: 0 for n in names})
            for j, n in enumerate(names):
                flag["flagged_by_dropped"][n] += int((f & drop[:, j]).sum())
    out["methods"][m] = {"by_dropped_modality": by_mod, "flag": flag, "mismatches_with_metrics_json": int(mismatches)}
for m in methods:
    if m != "emmr" and "emmr" in methods:
        out["paired_vs_emmr"][m] = {f"{r:g}": [correct[("emmr", s, r)] - correct[(m, s, r)] for s in range(seeds)] for r in rates}
        d = [v for r in rates[1:] for v in out["paired_vs_emmr"][m][f"{r:g}"]]
        wins, ties, losses = sum(v > 0 for v in d), sum(v == 0 for v in d), sum(v < 0 for v in d)
        n = wins + losses
        p_sign = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n) if n else 1.0
        out["paired_vs_emmr_summary"][m] = {"wins": wins, "ties": ties, "losses": losses, "sign_test_p": p_sign,
                                            "net_records": int(sum(d))}
out["test_records"] = int(len(batch))
with open(args.out, "w") as fh:
    json.dump(out, fh, indent=1)
for m, r in out["methods"].items():
    cells = "  ".join(f"{n} {c['final_correct']}/{c['records']} ({100 * c['final_correct'] / c['records']:.1f}; head {100 * c['backbone_correct'] / c['records']:.1f})"
                      for n, c in r["by_dropped_modality"].items())
    print(f"{m:17s} {cells}  | flag {r['flag']['flagged']} final {r['flag']['final_correct']} head {r['flag']['backbone_correct']} | mismatches {r['mismatches_with_metrics_json']}")
for m, d in out["paired_vs_emmr"].items():
    print(f"emmr - {m:17s}", {r: sum(v) for r, v in d.items()}, out["paired_vs_emmr_summary"][m])
