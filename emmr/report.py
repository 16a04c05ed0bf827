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
FLAG_METRICS = ("flag_rate", "flag_rate_missing", "flag_auroc", "flag_precision", "flag_recall", "accuracy_flagged",
                "accuracy_flagged_backbone")
SUBSET_METRICS = ("accuracy_complete", "accuracy_missing", "accuracy_key_missing", "accuracy_flagged", "flag_auroc",
                  "flag_precision_at_oracle_rate", "flag_recall_at_oracle_rate")
CEILING = {"flag_precision_at_oracle_rate": "ceiling_flag_precision", "flag_recall_at_oracle_rate": "ceiling_flag_recall"}


def _cell(stats: dict | None, scale: float = 100.0) -> str:
    if not stats or math.isnan(stats["mean"]):
        return "n/a"
    return f"{stats['mean'] * scale:.1f} ± {stats['std'] * scale:.1f}"


def already_missing_note(results: dict[str, dict]) -> str | None:
    """A sentence when the data already miss modalities: those records count toward the missing rate, so the rates
    at or below their share drop nothing more and give the same results. None when nothing is missing already."""
    by_rate = next(iter(results.values()))["by_rate"]
    actual = {r: s["missing_fraction"]["mean"] for r, s in by_rate.items() if "missing_fraction" in s}
    if not actual:
        return None
    own = min(actual.values())  # the data's own share: what the smallest rate cannot go below
    same = [r for r in actual if float(r) <= own + 1e-9]
    if own <= 0 or not same:
        return None
    return (f"The data already miss a modality in {own:.1%} of the records. They count toward the missing rate, so "
            f"rate{'s' if len(same) > 1 else ''} {', '.join(same)} drop{'' if len(same) > 1 else 's'} nothing more"
            f"{' and give the same results' if len(same) > 1 else ''}; records missing a modality at each rate: "
            + ", ".join(f"{r}: {v:.1%}" for r, v in actual.items()) + ".")


def markdown(results: dict[str, dict], title: str) -> str:
    """results: method -> evaluate() output. Percentages, mean ± std over seeds."""
    methods = list(results)
    rates = list(next(iter(results.values()))["by_rate"])
    counts = {m: len({r["seed"] for r in res["runs"]}) for m, res in results.items()}
    over = (f"{next(iter(counts.values()))} seeds" if len(set(counts.values())) == 1
            else "each method's seeds (" + ", ".join(f"{m} {n}" for m, n in counts.items()) + ")")
    lines = [f"# {title}", "", f"Mean ± standard deviation over {over}, in percent.", ""]
    note = already_missing_note(results)
    if note:
        lines += [note, ""]
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
            stats = results[m]["by_rate"][r]
            lines.append(f"| {m} | {r} | " + " | ".join(_cell(stats.get(k)) for k in FLAG_METRICS) + " |")
    if any("ceiling_accuracy" in s for res in results.values() for s in res["by_rate"].values()):
        lines += ["", "## beside the best possible (synthetic data)", "",
                  "Each cell: the method, and in brackets the Bayes-optimal oracle on the same records and masks "
                  "(emmr/oracle.py). The flag's precision and recall are taken at the oracle's flag rate.", "",
                  "| method | rate | " + " | ".join(SUBSET_METRICS) + " |", "| --- | --- |" + " --- |" * len(SUBSET_METRICS)]
        for m in methods:
            for r in rates[1:]:
                stats = results[m]["by_rate"][r]
                cells = [f"{_cell(stats.get(k))} ({_cell(stats.get(CEILING.get(k, 'ceiling_' + k)))})" for k in SUBSET_METRICS]
                lines.append(f"| {m} | {r} | " + " | ".join(cells) + " |")
    gated = {m: ensemble_kept(res) for m, res in results.items()}
    if any(gated.values()):
        lines += ["", "## the ensemble gate", "",
                  "Trainings that kept their ensemble: it beat the backbone on validation (docs/model.md, training "
                  "step 4), or the gate was off (train.ensemble_gate: false); the others are their backbone alone.",
                  "", "| method | kept | of |", "| --- | ---: | ---: |"]
        lines += [f"| {m} | {g[0]} | {g[1]} |" for m, g in gated.items() if g]
    return "\n".join(lines) + "\n"


def ensemble_kept(result: dict) -> tuple[int, int] | None:
    """(trainings that kept their ensemble, trainings with one) from a method's `training` records (emmr/compare.py);
    None for a method without an ensemble or results written before the records existed."""
    verdicts = [t["ensemble"]["kept"] for t in result.get("training", []) if t.get("ensemble")]
    return (sum(verdicts), len(verdicts)) if verdicts else None


def write_csv(results: dict[str, dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "missing_rate", "metric", "mean", "std", "seeds"])
        for m, res in results.items():
            for rate, stats in res["by_rate"].items():
                for metric, s in stats.items():
                    if isinstance(s, dict):
                        w.writerow([m, rate, metric, f"{s['mean']:.6f}", f"{s['std']:.6f}", len(s["values"])])


BASELINES = ("tf", "ae", "mmin")  # EMMR's members alone (emmr/methods.py); the methods named emmr-* are ablations
MAX_LINES = 5  # more lines than this on one plot are split into EMMR against its members, and the ablations


def plot_groups(methods: list[str]) -> list[tuple[str, str, list[str]]]:
    """(file suffix, title, methods) of each line plot: one plot when there are few methods; else EMMR against its
    members alone (and any other method), and EMMR against its ablations (emmr-*), each with EMMR for reference."""
    if len(methods) <= MAX_LINES:
        return [("", "", list(methods))]
    ablations = [m for m in methods if m.startswith("emmr-")]
    others = [m for m in methods if m not in ablations]
    reference = ["emmr"] if "emmr" in methods else []
    return [("", "EMMR against its members alone", others),
            ("_ablations", "EMMR against its ablations", reference + ablations)]


def plot_metric(results: dict[str, dict], metric: str, path: str, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    methods = list(results)
    step = min(0.006, 0.02 / max(len(methods), 1))  # spread the methods sideways so that error bars stay apart
    for i, (m, res) in enumerate(results.items()):
        rates = [float(r) + (i - (len(methods) - 1) / 2) * step for r in res["by_rate"]]
        mean = [res["by_rate"][r][metric]["mean"] * 100 for r in res["by_rate"]]
        std = [res["by_rate"][r][metric]["std"] * 100 for r in res["by_rate"]]
        emphasis = {"color": "black", "linewidth": 2.2, "zorder": 3} if m == "emmr" else {"linewidth": 1.3}
        ax.errorbar(rates, mean, yerr=std, marker="o", markersize=4, capsize=3, label=m, **emphasis)
    ax.set_xlabel("missing rate")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%, mean ± std over seeds)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(result: dict, label_names: list[str], path: str, title: str) -> None:
    rates = list(result["by_rate"])
    fig, axes = plt.subplots(1, len(rates), figsize=(2.7 * len(rates), 3.6), squeeze=False, layout="constrained")
    for ax, r in zip(axes[0], rates):
        cm = result["by_rate"][r]["confusion"]
        top = max(max(row) for row in cm) or 1
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=top)
        for i, row in enumerate(cm):
            for j, v in enumerate(row):  # white on the dark cells, black on the light ones
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
        ax.set_title(f"rate {r}", fontsize=9)
        ax.set_xticks(range(len(label_names)), label_names, fontsize=7)
        ax.set_yticks(range(len(label_names)), label_names if ax is axes[0][0] else [], fontsize=7)
    axes[0][0].set_ylabel("true label", fontsize=8)
    fig.supxlabel("predicted label", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(results: dict[str, dict], out_dir: str, title: str, label_names: list[str], extra: dict | None = None) -> list[str]:
    """metrics.json, metrics.md, metrics.csv, <metric>_vs_missing_rate.png (with many methods: EMMR against its
    members; and <metric>_vs_missing_rate_ablations.png), confusion_<method>.png."""
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
            for suffix, title, methods in plot_groups(list(results)):
                name = f"{metric}_vs_missing_rate{suffix}.png"
                plot_metric({m: results[m] for m in methods}, metric, os.path.join(out_dir, name), title)
                paths.append(name)
    for m, res in results.items():
        plot_confusion(res, label_names, os.path.join(out_dir, f"confusion_{m}.png"), f"{m}: confusion (summed over seeds)")
        paths.append(f"confusion_{m}.png")
    return paths
