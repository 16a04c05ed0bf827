"""Tables (Markdown, CSV), metrics.json and plots (PNG) of evaluation results, one method or many."""

from __future__ import annotations

import csv
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MAIN_METRICS = ("accuracy", "macro_f1")
FLAG_METRICS = ("flag_rate", "flag_rate_missing", "flag_precision", "flag_recall", "accuracy_flagged",
                "accuracy_flagged_backbone")


def _cell(stats: dict | None, scale: float = 100.0) -> str:
    if not stats or math.isnan(stats["mean"]):
        return "n/a"
    return f"{stats['mean'] * scale:.1f} ± {stats['std'] * scale:.1f}"


def markdown(results: dict[str, dict], title: str) -> str:
    """results: method -> evaluate() output. Percentages, mean ± std over seeds."""
    methods = list(results)
    rates = list(next(iter(results.values()))["by_rate"])
    n_seeds = len({r["seed"] for r in next(iter(results.values()))["runs"]})
    lines = [f"# {title}", "", f"Mean ± standard deviation over {n_seeds} seeds, in percent.", ""]
    for metric in MAIN_METRICS:
        lines += [f"## {metric.replace('_', ' ')} by missing rate", "",
                  "| method | " + " | ".join(rates) + " |", "| --- |" + " --- |" * len(rates)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_cell(results[m]["by_rate"][r].get(metric)) for r in rates) + " |")
        lines.append("")
    lines += ["## key-missing flag", "",
              "flag rate: flagged records / records; on missing: / records that miss a modality; precision and recall "
              "against the true key modality where the data carry it (synthetic); accuracy on the flagged records of "
              "the final output (Eq. 13) and of the backbone's full head (Eq. 8): what the ensemble changed.", "",
              "| method | rate | " + " | ".join(FLAG_METRICS) + " |", "| --- | --- |" + " --- |" * len(FLAG_METRICS)]
    for m in methods:
        for r in rates:
            if r == "0":
                continue
            stats = results[m]["by_rate"][r]
            lines.append(f"| {m} | {r} | " + " | ".join(_cell(stats.get(k)) for k in FLAG_METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(results: dict[str, dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "missing_rate", "metric", "mean", "std", "seeds"])
        for m, res in results.items():
            for rate, stats in res["by_rate"].items():
                for metric, s in stats.items():
                    if isinstance(s, dict):
                        w.writerow([m, rate, metric, f"{s['mean']:.6f}", f"{s['std']:.6f}", len(s["values"])])


def plot_metric(results: dict[str, dict], metric: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, res in results.items():
        rates = [float(r) for r in res["by_rate"]]
        mean = [res["by_rate"][r][metric]["mean"] * 100 for r in res["by_rate"]]
        std = [res["by_rate"][r][metric]["std"] * 100 for r in res["by_rate"]]
        ax.errorbar(rates, mean, yerr=std, marker="o", capsize=3, label=m)
    ax.set_xlabel("missing rate")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(result: dict, label_names: list[str], path: str, title: str) -> None:
    rates = list(result["by_rate"])
    fig, axes = plt.subplots(1, len(rates), figsize=(2.6 * len(rates), 2.8), squeeze=False)
    for ax, r in zip(axes[0], rates):
        cm = result["by_rate"][r]["confusion"]
        ax.imshow(cm, cmap="Blues")
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_title(f"rate {r}", fontsize=9)
        ax.set_xticks(range(len(label_names)), [n[:3] for n in label_names], fontsize=7)
        ax.set_yticks(range(len(label_names)), [n[:3] for n in label_names], fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0][0].set_ylabel("true", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(results: dict[str, dict], out_dir: str, title: str, label_names: list[str], extra: dict | None = None) -> list[str]:
    """metrics.json, metrics.md, metrics.csv, <metric>_vs_missing_rate.png, confusion_<method>.png."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({**(extra or {}), "methods": results}, f, indent=1)
    paths.append("metrics.json")
    with open(os.path.join(out_dir, "metrics.md"), "w") as f:
        f.write(markdown(results, title))
    paths.append("metrics.md")
    write_csv(results, os.path.join(out_dir, "metrics.csv"))
    paths.append("metrics.csv")
    for metric in (*MAIN_METRICS, "flag_precision", "flag_recall"):
        if all(metric in next(iter(r["by_rate"].values())) for r in results.values()):
            plot_metric(results, metric, os.path.join(out_dir, f"{metric}_vs_missing_rate.png"))
            paths.append(f"{metric}_vs_missing_rate.png")
    for m, res in results.items():
        plot_confusion(res, label_names, os.path.join(out_dir, f"confusion_{m}.png"), f"{m}: confusion (summed over seeds)")
        paths.append(f"confusion_{m}.png")
    return paths
