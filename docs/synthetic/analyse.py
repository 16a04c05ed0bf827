"""Paired, per-record comparison of EMMR and TF alone on `emmr synth` test data, with the controls of issue 11,
from the checkpoints that `emmr compare` saved (reporting only: nothing here chose any setting).

For every seed with both an `emmr` and a `tf` checkpoint, on the protocol's masks for that seed (the same
masks `emmr compare` evaluated), per record:
- EMMR against TF on the records that miss a modality: wins (EMMR right, TF wrong) and losses, pooled over
  seeds and rates, with an exact two-sided sign test; and per seed (net wins summed over rates), a sign test and
  a Wilcoxon signed-rank test over seeds;
- on complete records and on records the check did not flag: how many predictions differ (0 by construction);
- controls: TF x 3, the average of the probabilities of the `tf` models of seeds s, s+1, s+2 (an ensemble that
  is not EMMR's), on every record and only where EMMR's check fires; EMMR's ensemble on every record that
  misses a modality (no check);
- each accuracy beside the Bayes-optimal oracle's on the same records (emmr/oracle.py);
- the flag's AUROC (from metrics.json, beside the oracle's), and against the teacher's key truth (the definition the
  pair heads are trained for, computed with each seed's frozen teacher on the complete test records);
- with --table DIR: one comparison table (metrics.md/csv/json, plots) of every method over --table-seeds, merged from
  the --compare folders.

  python docs/synthetic/analyse.py --compare runs/synth/compare --test runs/synth/test --out docs/synthetic/analysis.json
"""
import argparse
import glob
import json
import math
import os
import re

import numpy as np
import torch
from scipy.stats import wilcoxon

from emmr import checkpoint
from emmr.batch import load_records
from emmr.evaluate import aggregate, protocol_masks
from emmr.keytruth import teacher_truth
from emmr.metrics import auroc
from emmr.oracle import SynthTruth, oracle_scores
from emmr.report import write_all
from emmr.scorer import Scorer
from emmr.tensors import model_inputs


def sign_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (ties dropped)."""
    n = wins + losses
    if not n:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def predict(scorer: Scorer, batch, mode: str = "flagged") -> dict:
    """Probabilities, labels, flags and, with mode "all", the ensemble's labels on every row."""
    model, out = scorer.model, {"probs": [], "flag": [], "score": [], "ensemble": []}
    names = scorer.config.modality_names
    with torch.inference_mode():
        for i in range(0, len(batch), 1024):
            part = batch.take(np.arange(i, min(i + 1024, len(batch))))
            if scorer.standardizer is not None:
                part = scorer.standardizer.apply(part)
            features, lengths = model_inputs(part, names, scorer.device)
            o = model(features, lengths, mode=mode)
            out["probs"].append(o.logits.float().softmax(-1).numpy())
            out["flag"].append(o.check.key_missing.numpy())
            out["score"].append(o.check.score.float().numpy())
            if o.ensemble_logits is not None:
                out["ensemble"].append(o.ensemble_logits.argmax(-1).numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", nargs="+", required=True, help="output folders of `emmr compare` (checkpoints/ inside)")
    p.add_argument("--test", required=True, help="the test data the comparison was evaluated on")
    p.add_argument("--out", required=True)
    p.add_argument("--table", help="folder for the merged comparison table of every method")
    p.add_argument("--table-seeds", type=int, default=5, help="the table's seeds: 0 .. N-1 of each method, as far as it was run (default 5)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpts = {}
    for d in args.compare:
        for path in glob.glob(os.path.join(d, "checkpoints", "*-seed*")):
            method, seed = re.fullmatch(r"(.+)-seed(\d+)", os.path.basename(path)).groups()
            ckpts[(method, int(seed))] = path
    rates = sorted({r for d in args.compare for r in json.load(open(os.path.join(d, "metrics.json")))["rates"]})
    seeds = sorted(s for (m, s) in ckpts if m == "emmr" and ("tf", s) in ckpts)
    tf_seeds = sorted(s for (m, s) in ckpts if m == "tf")
    scorers = {}

    def scorer(method, seed):
        if (method, seed) not in scorers:
            scorers[(method, seed)] = Scorer.load(ckpts[(method, seed)])
        return scorers[(method, seed)]

    first = scorer("emmr", seeds[0])
    batch, table = load_records(args.test, first.config.modalities, first.config.num_classes)
    truth = SynthTruth.from_table(table, first.config.modality_names)
    y = batch.labels
    tally = {k: [0, 0] for k in ("emmr", "tf3_all", "tf3_flagged", "ensemble_all")}  # wins, losses against TF
    correct = {k: 0 for k in ("tf", "emmr", "tf3_all", "tf3_flagged", "ensemble_all", "oracle")}
    flagged_correct = {k: 0 for k in ("tf", "emmr", "oracle")}
    per_seed, n_missing, n_flagged, complete_diff, unflagged_diff = {}, 0, 0, 0, 0
    teacher_auroc, teacher_agreement = [], []
    complete = batch.present().all(axis=1)
    for seed in seeds:
        emmr, tf = scorer("emmr", seed), scorer("tf", seed)
        teacher = checkpoint.load_teacher(ckpts[("emmr", seed)])
        t_key = np.zeros_like(truth.key)
        t_key[complete] = teacher_truth(teacher, batch.take(np.flatnonzero(complete)), emmr.config.modality_names,
                                        torch.device("cpu")).key
        teacher_agreement.append(float((t_key[complete] == truth.key[complete]).mean()))
        trio = [scorer("tf", tf_seeds[(tf_seeds.index(seed) + i) % len(tf_seeds)]) for i in range(3)]
        per_seed[seed] = 0
        for rate, _, drop in protocol_masks(batch.present(), rates, [seed]):
            if rate == 0:
                continue
            masked = batch.drop(drop)
            missing = ~masked.present()
            rows = missing.any(axis=1)
            e, t = predict(emmr, masked, "all"), predict(tf, masked)
            e_flagged = predict(emmr, masked)
            e_label, t_label = e_flagged["probs"].argmax(1), t["probs"].argmax(1)
            flag = e_flagged["flag"]
            tf3 = np.mean([predict(s, masked)["probs"] for s in trio], axis=0).argmax(1)
            variants = {"emmr": e_label, "tf3_all": tf3, "tf3_flagged": np.where(flag, tf3, t_label),
                        "ensemble_all": np.where(rows, e["ensemble"], t_label)}
            oracle = oracle_scores(truth, missing).label_index
            for k, pred in variants.items():
                right, wrong = (pred == y) & (t_label != y) & rows, (pred != y) & (t_label == y) & rows
                tally[k][0] += int(right.sum())
                tally[k][1] += int(wrong.sum())
                correct[k] += int((pred[rows] == y[rows]).sum())
            correct["tf"] += int((t_label[rows] == y[rows]).sum())
            correct["oracle"] += int((oracle[rows] == y[rows]).sum())
            for k, pred in (("tf", t_label), ("emmr", e_label), ("oracle", oracle)):
                flagged_correct[k] += int((pred[flag] == y[flag]).sum())
            per_seed[seed] += int((e_label[rows] == y[rows]).sum() - (t_label[rows] == y[rows]).sum())
            n_missing += int(rows.sum())
            n_flagged += int(flag.sum())
            single = (missing.sum(axis=1) == 1) & complete
            k = missing.argmax(axis=1)
            teacher_auroc.append(auroc(t_key[np.arange(len(k)), k][single], e_flagged["score"][single]))
            complete_diff += int((e_label[~rows] != t_label[~rows]).sum())
            unflagged_diff += int((e_label[~flag] != t_label[~flag]).sum())
    flag = {"auroc": [], "ceiling": []}
    for d in args.compare:
        for run in json.load(open(os.path.join(d, "metrics.json")))["methods"].get("emmr", {}).get("runs", []):
            if run["rate"] > 0 and "flag_auroc" in run:
                flag["auroc"].append(run["flag_auroc"])
                flag["ceiling"].append(run["ceiling_flag_auroc"])
    wins = sum(v > 0 for v in per_seed.values())
    losses = sum(v < 0 for v in per_seed.values())
    out = {
        "seeds": seeds, "rates": [r for r in rates if r > 0], "test_records": len(y),
        "records_missing_pooled": n_missing, "records_flagged_pooled": n_flagged,
        "accuracy_missing": {k: v / n_missing for k, v in correct.items()},
        "accuracy_flagged": {k: v / max(n_flagged, 1) for k, v in flagged_correct.items()},
        "against_tf_on_missing": {k: {"wins": w, "losses": l, "net": w - l, "sign_test_p": sign_p(w, l)}
                                  for k, (w, l) in tally.items()},
        "emmr_minus_tf_per_seed": per_seed,
        "seeds_won_lost": [int(wins), int(losses)], "sign_test_over_seeds_p": sign_p(int(wins), int(losses)),
        "wilcoxon_over_seeds_p": float(wilcoxon(list(per_seed.values())).pvalue),
        "differences_on_complete_records": complete_diff, "differences_on_unflagged_records": unflagged_diff,
        "flag_auroc": float(np.mean(flag["auroc"])), "oracle_flag_auroc": float(np.mean(flag["ceiling"])),
        "flag_auroc_over_oracle": float(np.mean(flag["auroc"]) / np.mean(flag["ceiling"])),
        "flag_auroc_against_teacher_truth": float(np.nanmean(teacher_auroc)),
        "teacher_key_agreement_with_generator": float(np.mean(teacher_agreement)),
    }
    if args.table:
        write_table(args, first)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


def write_table(args, scorer: Scorer) -> None:
    """Every method's runs over seeds 0 .. table_seeds - 1, merged from the --compare folders, as one table."""
    runs: dict[str, list] = {}
    extra = {}
    for d in args.compare:
        doc = json.load(open(os.path.join(d, "metrics.json")))
        extra = {k: v for k, v in doc.items() if k not in ("methods", "seeds")}
        for method, res in doc["methods"].items():
            runs.setdefault(method, []).extend(r for r in res["runs"] if r["seed"] < args.table_seeds)
    order = ["emmr", "tf", "ae", "mmin", "emmr-max", "emmr-average", "emmr-no-forward", "emmr-no-backward"]
    results = {m: {"runs": runs[m], "by_rate": aggregate(runs[m])} for m in sorted(runs, key=order.index)}
    seeds = {m: sorted({r["seed"] for r in runs[m]}) for m in results}
    counts = ", ".join(f"{m} {len(s)}" for m, s in seeds.items())
    write_all(results, args.table, f"Comparison on {args.test} (seeds per method: {counts})",
              list(scorer.config.label_names), extra={**extra, "seeds": seeds, "merged_from": args.compare})


if __name__ == "__main__":
    main()
