"""Tables for docs/synthetic.md from the metrics.json of `emmr compare` (reporting only: nothing here chose any
setting). Reads only metrics.json; no model is run.

- accuracy and macro-F1 by missing rate (mean ± std over seeds);
- the key-missing flag against the true key modality: base rate of key truth, flag rate, precision, recall;
- the ensemble on flagged rows, pooled over seeds: records flagged, right by the final output (Eq. 13) and by
  the backbone's full head (Eq. 8) (needs `accuracy_flagged*`, absent from older runs);
- paired per seed (same masks for every method): correct test records of EMMR minus TF, wins/ties/losses and
  a two-sided sign test (ties dropped) over the (rate, seed) runs and over the seeds (summed over rates; the
  runs of one seed share the two models, so the seeds are the independent units); also split into the records that miss a modality and the complete ones
  (counts rebuilt from the per-run accuracies where the dropped modality was key / was not);
- with --before: the same EMMR-vs-TF numbers for an earlier run on the same data.

  python docs/synthetic/analyse.py --metrics docs/synthetic/metrics.json \
      --before runs/synthetic/compare-joint/metrics.json --out docs/synthetic/analysis.json
"""
import argparse
import json
import math

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--metrics", required=True)
p.add_argument("--before", help="metrics.json of an earlier run on the same data and masks")
p.add_argument("--out", required=True)
args = p.parse_args()


def sign_p(w: int, l: int) -> float:
    n = w + l
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(w, l) + 1)) / 2 ** n) if n else 1.0


def cell(s: dict) -> str:
    return "n/a" if s is None or math.isnan(s["mean"]) else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def analyse(path: str) -> dict:
    d = json.load(open(path))
    methods = d["methods"]
    first = methods[next(iter(methods))]
    n_test = int(sum(map(sum, first["runs"][0]["confusion"])))
    rates = [f"{r:g}" for r in d["rates"]]
    out = {"test_records": n_test, "rates": rates, "seeds": d["seeds"], "by_method": {}, "paired_emmr_vs_tf": {}}
    for m, res in methods.items():
        runs = res["runs"]
        flagged = {}
        for r in rates[1:]:
            rr = [x for x in runs if f"{x['rate']:g}" == r]
            n = [round(x["flag_rate"] * n_test) for x in rr]
            fin = [round(x.get("accuracy_flagged", float("nan")) * k) if k and "accuracy_flagged" in x else (0 if not k else None) for x, k in zip(rr, n)]
            bb = [round(x.get("accuracy_flagged_backbone", float("nan")) * k) if k and "accuracy_flagged_backbone" in x else (0 if not k else None) for x, k in zip(rr, n)]
            flagged[r] = {"flagged": sum(n), "final_correct": None if None in fin else sum(fin),
                          "backbone_correct": None if None in bb else sum(bb)}
        out["by_method"][m] = {"flagged_pooled": flagged}
    if "emmr" in methods and "tf" in methods:
        for r in rates:
            def correct(m):
                return {x["seed"]: round(x["accuracy"] * n_test) for x in methods[m]["runs"] if f"{x['rate']:g}" == r}
            e, t = correct("emmr"), correct("tf")
            diff = [e[s] - t[s] for s in sorted(e)]
            w, ti, l = sum(v > 0 for v in diff), sum(v == 0 for v in diff), sum(v < 0 for v in diff)
            out["paired_emmr_vs_tf"][r] = {"diff_per_seed": diff, "sum": sum(diff), "wins": w, "ties": ti, "losses": l}
        # the same comparison split into the records that miss a modality and the complete ones (same masks)
        for r in rates[1:]:
            def split(m):
                res = {}
                for x in methods[m]["runs"]:
                    if f"{x['rate']:g}" != r:
                        continue
                    n_miss = round(x["missing_fraction"] * n_test)
                    n_key = round(x["key_truth_rate"] * n_miss)
                    miss = round(x["accuracy_key_missing"] * n_key) + round(x["accuracy_nonkey_missing"] * (n_miss - n_key))
                    res[x["seed"]] = (miss, round(x["accuracy"] * n_test) - miss, n_miss)
                return res
            e, t = split("emmr"), split("tf")
            out["paired_emmr_vs_tf"][r]["missing_records"] = e[0][2]
            out["paired_emmr_vs_tf"][r]["diff_on_missing"] = [e[s][0] - t[s][0] for s in sorted(e)]
            out["paired_emmr_vs_tf"][r]["diff_on_complete"] = [e[s][1] - t[s][1] for s in sorted(e)]
        for part in ("diff_on_missing", "diff_on_complete"):
            v = [x for r in rates[1:] for x in out["paired_emmr_vs_tf"][r][part]]
            w, l = sum(x > 0 for x in v), sum(x < 0 for x in v)
            per_seed = [sum(out["paired_emmr_vs_tf"][r][part][i] for r in rates[1:]) for i in range(len(e))]
            ws, ls = sum(x > 0 for x in per_seed), sum(x < 0 for x in per_seed)
            out["paired_emmr_vs_tf"][f"rates>0 {part}"] = {"sum": sum(v), "wins": w, "ties": len(v) - w - l, "losses": l,
                                                          "sign_test_p": sign_p(w, l), "per_seed_sum": per_seed,
                                                          "per_seed_sign_test_p": sign_p(ws, ls)}
        allv = [v for r in rates[1:] for v in out["paired_emmr_vs_tf"][r]["diff_per_seed"]]
        w, l = sum(v > 0 for v in allv), sum(v < 0 for v in allv)
        per_seed = [sum(out["paired_emmr_vs_tf"][r]["diff_per_seed"][i] for r in rates[1:]) for i in range(d["seeds"])]
        ws, ls = sum(x > 0 for x in per_seed), sum(x < 0 for x in per_seed)
        out["paired_emmr_vs_tf"]["rates>0"] = {"sum": sum(allv), "wins": w, "ties": len(allv) - w - l, "losses": l,
                                               "sign_test_p": sign_p(w, l), "runs": len(allv), "per_seed_sum": per_seed,
                                               "per_seed_sign_test_p": sign_p(ws, ls)}
    return out, d


res, d = analyse(args.metrics)
M, rates = d["methods"], res["rates"]
lines = []
for metric in ("accuracy", "macro_f1"):
    lines += [f"\n{metric} (%)", "| method | " + " | ".join(rates) + " |", "| --- |" + " ---: |" * len(rates)]
    lines += [f"| {m} | " + " | ".join(cell(M[m]["by_rate"][r][metric]) for r in rates) + " |" for m in M]
lines += ["\nflag, EMMR: key truth rate | flag rate on missing | precision | recall | key modality named right",
          "| rate | key truth rate | flag rate (missing) | precision | recall | key modality right |",
          "| --- | ---: | ---: | ---: | ---: | ---: |"]
for r in rates[1:]:
    s = M["emmr"]["by_rate"][r]
    lines.append(f"| {r} | " + " | ".join(cell(s.get(k)) for k in ("key_truth_rate", "flag_rate_missing", "flag_precision",
                                                                     "flag_recall", "key_modality_accuracy")) + " |")
lines += ["\nflag precision / recall by method", "| method | " + " | ".join(rates[1:]) + " |", "| --- |" + " ---: |" * (len(rates) - 1)]
for m in M:
    lines.append(f"| {m} | " + " | ".join(f"{cell(M[m]['by_rate'][r].get('flag_precision'))} / {cell(M[m]['by_rate'][r].get('flag_recall'))}"
                                         for r in rates[1:]) + " |")
lines += ["\nflag rate on records missing a modality (%)", "| method | " + " | ".join(rates[1:]) + " |", "| --- |" + " ---: |" * (len(rates) - 1)]
for m in M:
    lines.append(f"| {m} | " + " | ".join(cell(M[m]["by_rate"][r].get("flag_rate_missing")) for r in rates[1:]) + " |")
lines += ["\naccuracy where the dropped modality was key / was not (%)", "| method | " + " | ".join(rates[1:]) + " |",
          "| --- |" + " ---: |" * (len(rates) - 1)]
for m in M:
    lines.append(f"| {m} | " + " | ".join(f"{cell(M[m]['by_rate'][r].get('accuracy_key_missing'))} / {cell(M[m]['by_rate'][r].get('accuracy_nonkey_missing'))}"
                                         for r in rates[1:]) + " |")
lines += ["\nflagged rows pooled over seeds: flagged, final right, backbone right",
          "| method | " + " | ".join(rates[1:]) + " | all |", "| --- |" + " ---: |" * len(rates)]
for m in M:
    f = res["by_method"][m]["flagged_pooled"]
    tot = [sum(f[r][k] for r in rates[1:]) if all(f[r][k] is not None for r in rates[1:]) else None
           for k in ("flagged", "final_correct", "backbone_correct")]
    na = lambda v: "n/a" if v is None else v  # noqa: E731
    lines.append(f"| {m} | " + " | ".join(f"{f[r]['flagged']}: {na(f[r]['final_correct'])} / {na(f[r]['backbone_correct'])}" for r in rates[1:])
                 + f" | {tot[0]}: {na(tot[1])} / {na(tot[2])} |")
    res["by_method"][m]["flagged_all_rates"] = dict(zip(("flagged", "final_correct", "backbone_correct"), tot))
lines += ["\npaired EMMR - TF, correct test records per seed", "| rate | " + " | ".join(f"seed {s}" for s in range(d["seeds"])) + " | sum | W/T/L |",
          "| --- |" + " ---: |" * (d["seeds"] + 2)]
for r in rates:
    x = res["paired_emmr_vs_tf"][r]
    lines.append(f"| {r} | " + " | ".join(f"{v:+d}" for v in x["diff_per_seed"]) + f" | {x['sum']:+d} | {x['wins']}/{x['ties']}/{x['losses']} |")
lines.append(f"rates>0: {res['paired_emmr_vs_tf']['rates>0']}")
lines += ["\npaired EMMR - TF on the records that miss a modality | on the complete records",
          "| rate | missing records per run | on missing, per seed | sum | on complete, per seed | sum |", "| --- |" + " ---: |" * 5]
for r in rates[1:]:
    x = res["paired_emmr_vs_tf"][r]
    lines.append(f"| {r} | {x['missing_records']} | " + " ".join(f"{v:+d}" for v in x["diff_on_missing"]) + f" | {sum(x['diff_on_missing']):+d} | "
                 + " ".join(f"{v:+d}" for v in x["diff_on_complete"]) + f" | {sum(x['diff_on_complete']):+d} |")
for part in ("diff_on_missing", "diff_on_complete"):
    lines.append(f"rates>0 {part}: {res['paired_emmr_vs_tf'][f'rates>0 {part}']}")
if args.before:
    before, bd = analyse(args.before)
    res["before"] = {"path": args.before, "paired_emmr_vs_tf": before["paired_emmr_vs_tf"]}
    lines += ["\nbefore -> after (accuracy %, EMMR and TF; flag precision / recall EMMR)",
              "| | " + " | ".join(rates) + " |", "| --- |" + " ---: |" * len(rates)]
    for m in ("emmr", "tf"):
        for tag, dd in (("before", bd), ("after", d)):
            lines.append(f"| {m} {tag} | " + " | ".join(cell(dd["methods"][m]["by_rate"][r]["accuracy"]) for r in rates) + " |")
    for tag, dd in (("before", bd), ("after", d)):
        lines.append(f"| emmr P/R {tag} | n/a | " + " | ".join(f"{cell(dd['methods']['emmr']['by_rate'][r].get('flag_precision'))} / "
                                                               f"{cell(dd['methods']['emmr']['by_rate'][r].get('flag_recall'))}" for r in rates[1:]) + " |")
    for tag, rr in (("before", before), ("after", res)):
        lines.append(f"| EMMR-TF {tag} | " + " | ".join(f"{rr['paired_emmr_vs_tf'][r]['sum']:+d}" for r in rates) + " |")
    for k in ("rates>0", "rates>0 diff_on_missing", "rates>0 diff_on_complete"):
        lines.append(f"before {k}: {before['paired_emmr_vs_tf'][k]}")
with open(args.out, "w") as fh:
    json.dump(res, fh, indent=1)
print("\n".join(lines))
