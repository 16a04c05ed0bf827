"""The tables of docs/results.md, printed from the files the runs wrote (nothing here trains or scores).

Reads `emmr compare --cross-fit` output (OUT/metrics.json: dev figures; OUT/cross-fitted/metrics.json) and
docs/mosi/baselines.json, and prints Markdown: accuracy and macro-F1 by missing rate, dev and cross-fitted
side by side for every method, the logistic-regression baseline in the first row, and the acceptance checks
of issue 12.

  .venv/bin/python docs/mosi/tables.py --compare docs/mosi --baselines docs/mosi/baselines.json
"""
import argparse
import json
import os


def cell(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", required=True, help="output folder of emmr compare --cross-fit")
    p.add_argument("--baselines", required=True, help="docs/mosi/baselines.json")
    args = p.parse_args()
    dev = json.load(open(os.path.join(args.compare, "metrics.json")))
    crossed = json.load(open(os.path.join(args.compare, "cross-fitted", "metrics.json")))
    base = json.load(open(args.baselines))["all_modalities_by_rate"]
    rates = list(next(iter(dev["methods"].values()))["by_rate"])
    for metric in ("accuracy", "macro_f1"):
        print(f"\n### {metric.replace('_', '-')} (%), mean ± std over {dev['seeds']} seeds\n")
        print("| method | figure | " + " | ".join(rates) + " |")
        print("| --- | --- |" + " ---: |" * len(rates))
        print("| logistic regression | dev (nothing selected) | " + " | ".join(cell(base[r][metric]) for r in rates) + " |")
        for method in dev["methods"]:
            for name, res in (("dev", dev), ("cross-fitted", crossed)):
                by_rate = res["methods"][method]["by_rate"]
                print(f"| {method} | {name} | " + " | ".join(cell(by_rate[r][metric]) for r in rates) + " |")
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
