"""The tables of docs/results.md, printed from the files the runs wrote (nothing here trains or scores).

Reads `emmr compare --cross-fit` output (OUT/metrics.json: dev figures; OUT/cross-fitted/metrics.json) and
docs/mosi/baselines.json, and prints Markdown: accuracy and macro-F1 by missing rate, dev and cross-fitted
side by side for every method, the logistic-regression baseline in the first row, the key-missing flag
against the frozen teacher's key truth, how many trainings kept their ensemble, and the acceptance checks of
issue 12.

Several comparison folders (the same data, seeds and settings, different methods: one comparison run as
several processes) are merged, method by method (a folder without cross-fitted/ adds dev figures only); `--write DIR` writes the merged table, plots and
metrics.json to DIR and DIR/cross-fitted as `emmr compare` would have.

  .venv/bin/python docs/mosi/tables.py --compare docs/mosi --baselines docs/mosi/baselines.json
  .venv/bin/python docs/mosi/tables.py --compare runs/core,runs/rest --write docs/mosi --baselines docs/mosi/baselines.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from emmr.methods import METHODS  # noqa: E402

SAME = ("train", "val", "test", "seeds", "rates", "model", "train_config")


def cell(stats: dict, scale: float = 100.0, digits: int = 1) -> str:
    if stats["mean"] != stats["mean"]:  # NaN: no run had a value
        return "n/a"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def merged(folders: list[str], sub: str = "") -> dict:
    """The metrics.json of every folder that has one, methods merged; the runs must share data, seeds and settings."""
    folders = [f for f in folders if os.path.exists(os.path.join(f, sub, "metrics.json"))]
    docs = [json.load(open(os.path.join(f, sub, "metrics.json"))) for f in folders]
    first = docs[0]
    for f, d in zip(folders[1:], docs[1:]):
        differ = [k for k in SAME if k != "train_config" and d.get(k) != first.get(k)]
        differ += [k for k, v in d["train_config"].items() if k != "method" and first["train_config"].get(k) != v]
        if differ:
            raise SystemExit(f"{f}: not the same comparison as {folders[0]} ({', '.join(differ)} differ)")
    methods = {m: r for d in docs for m, r in d["methods"].items()}
    order = [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
    return {**first, "merged_from": [os.path.join(f, sub) for f in folders], "methods": {m: methods[m] for m in order}}


def write(doc: dict, out: str, title: str) -> None:
    from emmr.report import write_all

    results = doc["methods"]
    extra = {k: v for k, v in doc.items() if k != "methods"}
    write_all(results, out, title, list(doc["model"]["label_names"]), extra=extra)


def pooled_flag(runs: list[dict]) -> dict:
    """Counts over the seeds' runs of one rate, recovered from each run's rates (every simulated missing record
    misses exactly one modality, so the flag's precision and recall are over all missing records)."""
    c = {"flagged": 0, "true": 0, "key": 0, "missing": 0, "emmr_right": 0, "tf_right": 0}
    for r in runs:
        n = sum(map(sum, r["confusion"]))
        missing = round(r["missing_fraction"] * n)
        flagged = round(r["flag_rate"] * n)
        c["missing"] += missing
        c["key"] += round(r["key_truth_rate"] * missing) if missing else 0
        c["flagged"] += flagged
        if flagged:
            c["true"] += round(r["flag_precision"] * flagged)
            c["emmr_right"] += round(r["accuracy_flagged"] * flagged)
            c["tf_right"] += round(r["accuracy_flagged_backbone"] * flagged)
    return c


def flag_table(dev: dict, crossed: dict, rates: list[str]) -> None:
    """The key-missing flag against the frozen teacher's key truth, EMMR and TF on the flagged rows."""
    above = [r for r in rates if r != "0"]
    pct = lambda a, b: f"{100 * a / b:.1f} ({a}/{b})" if b else "n/a"  # noqa: E731
    for name, res in (("dev", dev), ("cross-fitted", crossed)):
        result = res["methods"]["emmr"]
        counts = {r: pooled_flag([x for x in result["runs"] if f"{x['rate']:g}" == r]) for r in above}
        print(f"\n### the key-missing flag of EMMR, {name}: AUROC mean ± std over seeds, the rest pooled over the "
              f"{res['seeds']} seeds (%, count)\n")
        print("| | " + " | ".join(above) + " |")
        print("| --- |" + " ---: |" * len(above))
        print("| flag AUROC (key-missing score) | " + " | ".join(cell(result["by_rate"][r]["flag_auroc"]) for r in above) + " |")
        rows = (("flag precision", "true", "flagged"), ("key rate = a random flag's precision", "key", "missing"),
                ("flag recall", "true", "key"), ("records flagged, of those missing a modality", "flagged", "missing"),
                ("EMMR accuracy on flagged rows", "emmr_right", "flagged"),
                ("TF accuracy on the same rows", "tf_right", "flagged"))
        for label, a, b in rows:
            print(f"| {label} | " + " | ".join(pct(counts[r][a], counts[r][b]) for r in above) + " |")


def gate_table(dev: dict, crossed: dict) -> None:
    """How many trainings kept their ensemble (emmr/train.py keep_ensemble), from the runs' `training` records
    (written by emmr compare since the gate; older runs have none, and the table is left out)."""
    from emmr.report import ensemble_kept

    def kept(res: dict, method: str) -> str:
        counts = ensemble_kept(res["methods"].get(method, {}))
        return f"{counts[0]} of {counts[1]}" if counts else "n/a"
    rows = [(m, kept(dev, m), kept(crossed, m)) for m in dev["methods"]]
    rows = [r for r in rows if r[1:] != ("n/a", "n/a")]
    if rows:
        print("\n### the ensemble gate: trainings that kept their ensemble\n")
        print("| method | dev | cross-fitted (halves) |\n| --- | ---: | ---: |")
        for method, on_dev, on_halves in rows:
            print(f"| {method} | {on_dev} | {on_halves} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", required=True, help="output folder(s) of emmr compare --cross-fit, comma-separated")
    p.add_argument("--baselines", required=True, help="docs/mosi/baselines.json")
    p.add_argument("--write", help="write the merged metrics.json/md/csv and plots here (and in its cross-fitted/)")
    args = p.parse_args()
    folders = [f for f in args.compare.split(",") if f]
    dev, crossed = merged(folders), merged(folders, "cross-fitted")
    if args.write:
        write(dev, args.write, f"Comparison (dev figures: selected and scored on {dev['val']})")
        write(crossed, os.path.join(args.write, "cross-fitted"),
              f"Comparison, cross-fitted on {dev['val']} (select on one half by video, score the other)")
    base = json.load(open(args.baselines))["all_modalities_by_rate"]
    rates = list(next(iter(dev["methods"].values()))["by_rate"])
    for metric in ("accuracy", "macro_f1"):
        print(f"\n### {metric.replace('_', '-')} (%), mean ± std over {dev['seeds']} seeds\n")
        print("| method | figure | " + " | ".join(rates) + " |")
        print("| --- | --- |" + " ---: |" * len(rates))
        print("| logistic regression | dev (nothing selected) | " + " | ".join(cell(base[r][metric]) for r in rates) + " |")
        for method in dev["methods"]:
            for name, res in (("dev", dev), ("cross-fitted", crossed)):
                if method not in res["methods"]:
                    print(f"| {method} | {name} | " + " | ".join("not run" for _ in rates) + " |")
                    continue
                by_rate = res["methods"][method]["by_rate"]
                print(f"| {method} | {name} | " + " | ".join(cell(by_rate[r][metric]) for r in rates) + " |")
    flag_table(dev, crossed, rates)
    gate_table(dev, crossed)
    print("\n### acceptance (issue 12)\n")
    e, t = dev["methods"]["emmr"]["by_rate"], dev["methods"]["tf"]["by_rate"]
    ec, tc = crossed["methods"]["emmr"]["by_rate"], crossed["methods"]["tf"]["by_rate"]
    acc = lambda by, r: 100 * by[r]["accuracy"]["mean"]  # noqa: E731
    print(f"- dev, EMMR accuracy at rate 0: {acc(e, '0'):.1f} (needs >= 80.0); at 0.3: {acc(e, '0.3'):.1f} (needs >= 77.0)")
    above = [r for r in rates if r != "0"]
    print("- dev, EMMR minus TF at rates above 0: " + ", ".join(f"{r}: {acc(e, r) - acc(t, r):+.1f}" for r in above))
    print("- cross-fitted, EMMR minus TF: " + ", ".join(f"{r}: {acc(ec, r) - acc(tc, r):+.1f}" for r in above))
    print("- EMMR, dev minus cross-fitted: " + ", ".join(f"{r}: {acc(e, r) - acc(ec, r):+.1f}" for r in rates))


if __name__ == "__main__":
    main()
