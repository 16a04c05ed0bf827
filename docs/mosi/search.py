"""The written-down search for MOSI settings that generalise from the training videos to dev.

Every setting below is a change to the `mosi` preset's model sizes and TrainConfig's defaults (the preset's
own training settings, which the search chose, are undone first, so `base` stays the untuned starting point). For each setting
run, EMMR and TF alone are trained by `emmr.compare` (one frozen full-modality network per seed, shared) on
every training video, selected (early stopping) on dev, and scored on dev at missing rates 0 to 0.5 with the
protocol's masks: the *dev figure*. With --cross-fit, also the *cross-fitted figure* (emmr/crossfit.py: dev
split by video into halves, select on one, score the other, swap). Every run is appended to a JSON-lines
log (one line per setting and run) and the table in docs/results.md is printed from that log, so every
setting tried is in it.

Selection rule, fixed before the search: the setting with the highest EMMR dev accuracy averaged over the
six missing rates (mean over seeds); its cross-fitted figure is reported beside it. The rule is applied per
model version (`emmr_version` of a logged run; runs before EMMR v2 carry none and count as v1), so a setting
is only ever compared with runs of the same model.

  .venv/bin/python docs/mosi/search.py --data data/mosi --log docs/mosi/search.jsonl --settings base,std --seeds 3
  .venv/bin/python docs/mosi/search.py --log docs/mosi/search.jsonl --table      # the Markdown table only
"""
import argparse
import json
import logging
import subprocess
import time
from dataclasses import replace

import torch

from emmr.batch import load_records
from emmr.compare import compare
from emmr.config import PRESET_TRAINING
from emmr.convert import record_videos
from emmr.crossfit import cross_fitted
from emmr.dataspec import data_spec
from emmr.missing import DEFAULT_RATES
from emmr.settings import resolve
from emmr.train import TrainConfig

# name -> ({ModelConfig changes}, {TrainConfig changes}), on top of the `mosi` model and TrainConfig's defaults.
STD = {"standardize": True}
SETTINGS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "std": ({}, STD),
    "std-noise0.1": ({}, {**STD, "feature_noise": 0.1}),
    "std-noise0.3": ({}, {**STD, "feature_noise": 0.3}),
    "std-noise0.5": ({}, {**STD, "feature_noise": 0.5}),
    "std-noise1.0": ({}, {**STD, "feature_noise": 1.0}),
    "std-fdrop0.2": ({}, {**STD, "feature_dropout": 0.2}),
    "std-fdrop0.5": ({}, {**STD, "feature_dropout": 0.5}),
    "std-ls0.1": ({}, {**STD, "label_smoothing": 0.1}),
    "std-ls0.2": ({}, {**STD, "label_smoothing": 0.2}),
    "std-wd1e-4": ({}, {**STD, "weight_decay": 1e-4}),
    "std-wd1e-3": ({}, {**STD, "weight_decay": 1e-3}),
    "std-wd1e-2": ({}, {**STD, "weight_decay": 1e-2}),
    "std-h32": ({"hidden": 32, "ffn": 128, "ae_dims": (24, 16, 8)}, STD),
    "std-h16": ({"hidden": 16, "ffn": 64, "ae_dims": (16, 8, 4)}, STD),
    "std-drop0.5": ({"dropout": 0.5}, STD),
    "std-miss0.5": ({}, {**STD, "missing_rate": 0.5}),
    "std-lr3e-4": ({}, {**STD, "lr": 3e-4}),
    "std-visual2x": ({}, {**STD, "missing_probs": (0.5, 0.25, 0.25)}),
    # combinations of the single knobs that came out at or above `std`'s neighbours
    "std-drop0.5-noise0.3": ({"dropout": 0.5}, {**STD, "feature_noise": 0.3}),
    "std-drop0.5-wd1e-3": ({"dropout": 0.5}, {**STD, "weight_decay": 1e-3}),
    "std-noise0.3-wd1e-4": ({}, {**STD, "feature_noise": 0.3, "weight_decay": 1e-4}),
    # EMMR v2's own training choices (emmr/train.py): what early stopping reads, the pair heads' targets
    "std-select-acc": ({}, {**STD, "select_metric": "accuracy"}),
    "std-select-ll": ({}, {**STD, "select_metric": "log_likelihood"}),
    "std-pairs-hard": ({}, {**STD, "pair_targets": "hard"}),
    "std-noise1.0-avg": ({}, {**STD, "feature_noise": 1.0, "weight_average": 0.995}),
    "std-noise1.0-avg-ll": ({}, {**STD, "feature_noise": 1.0, "weight_average": 0.995, "select_metric": "log_likelihood"}),
    "std-noise1.0-own": ({"member_encoders": "own"}, {**STD, "feature_noise": 1.0}),
    "std-noise1.0-tf3": ({"members": ("tf", "tf#2", "tf#3"), "member_encoders": "own"}, {**STD, "feature_noise": 1.0}),
}


def git_commit() -> str:
    """The commit the code was loaded from ('+' when the worktree had changes): read once, at start."""
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
        return run("rev-parse", "--short", "HEAD") + ("+" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COMMIT = git_commit()
EMMR_VERSION = "v2"  # the model the runs below train (docs/model.md); logged with every run


def summary(results: dict) -> dict:
    """method -> rate -> {accuracy, macro_f1: {mean, std}}."""
    return {m: {r: {k: {"mean": s[k]["mean"], "std": s[k]["std"]} for k in ("accuracy", "macro_f1")}
                for r, s in res["by_rate"].items()} for m, res in results.items()}


def run_setting(name: str, data: str, seeds: int, cross_fit: bool, methods: list[str], epochs: int | None) -> dict:
    model_changes, train_changes = SETTINGS[name]
    spec = data_spec(data)
    model_cfg, train_cfg = resolve("mosi", None, "emmr", {"epochs": epochs}, spec)
    train_cfg = replace(train_cfg, **{k: getattr(TrainConfig(), k) for k in PRESET_TRAINING.get("mosi", {})})
    model_cfg, train_cfg = model_cfg.with_(**model_changes), replace(train_cfg, **train_changes)
    load = lambda split: load_records(f"{data}/{split}", model_cfg.modalities, model_cfg.num_classes)  # noqa: E731
    train, _ = load("train")
    dev, dev_table = load("dev")
    started = time.perf_counter()
    rec = {"setting": name, "emmr_version": EMMR_VERSION, "model_changes": model_changes, "train_changes": train_changes, "seeds": seeds,
           "commit": COMMIT, "model": model_cfg.to_dict(), "train": train_cfg.__dict__,
           "dev": summary(compare(train, dev, dev, dev_table, model_cfg, train_cfg, methods, seeds, DEFAULT_RATES))}
    if cross_fit:
        rec["cross_fitted"] = summary(cross_fitted(train, dev, dev_table, record_videos(f"{data}/dev"), model_cfg,
                                                   train_cfg, methods, seeds, DEFAULT_RATES))
    rec["seconds"] = time.perf_counter() - started
    return rec


def criterion(rec: dict, figure: str = "dev") -> float:
    """The selection rule: EMMR's accuracy averaged over the missing rates."""
    rates = rec[figure]["emmr"]
    return sum(r["accuracy"]["mean"] for r in rates.values()) / len(rates)


def version(rec: dict) -> str:
    return rec.get("emmr_version", "v1")


def table(records: list[dict]) -> str:
    """Markdown: one row per run, EMMR and TF accuracy at rates 0, 0.3, 0.5 and the criterion, dev then cross-fitted;
    the selected run of each model version marked."""
    best = {v: max((r for r in records if version(r) == v), key=criterion) for v in {version(r) for r in records}}
    head = ("| setting | model | commit | seeds | EMMR acc 0 | 0.3 | 0.5 | TF acc 0 | 0.3 | 0.5 | criterion | "
            "cross-fitted EMMR 0 / 0.3 / 0.5 | TF 0 / 0.3 / 0.5 |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]

    def cell(rec, figure, method, rate):
        s = rec.get(figure, {}).get(method, {}).get(rate)
        return f"{100 * s['accuracy']['mean']:.1f} ± {100 * s['accuracy']['std']:.1f}" if s else "n/a"

    for rec in records:
        cf = "cross_fitted" in rec
        mark = " **(selected)**" if rec is best[version(rec)] else ""
        row = [f"`{rec['setting']}`{mark}", version(rec), rec["commit"], str(rec["seeds"])]
        row += [cell(rec, "dev", "emmr", r) for r in ("0", "0.3", "0.5")]
        row += [cell(rec, "dev", "tf", r) for r in ("0", "0.3", "0.5")]
        row += [f"{100 * criterion(rec):.2f}"]
        row += [" / ".join(cell(rec, "cross_fitted", m, r).split(" ±")[0] for r in ("0", "0.3", "0.5")) if cf else "n/a"
                for m in ("emmr", "tf")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="output folder of `emmr convert mosi-utterance-csv`")
    p.add_argument("--log", required=True, help="JSON-lines file: every run is appended")
    p.add_argument("--settings", default="", help=f"comma-separated, from {','.join(SETTINGS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default="emmr,tf")
    p.add_argument("--epochs", type=int, help="override the preset's epoch bound")
    p.add_argument("--cross-fit", action="store_true", help="also the cross-fitted figure (twice the training)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="print the table of every logged run")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    for name in [s for s in args.settings.split(",") if s]:
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
        rec = run_setting(name, args.data, args.seeds, args.cross_fit, args.methods.split(","), args.epochs)
        with open(args.log, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"{name}: criterion {100 * criterion(rec):.2f}, EMMR dev accuracy "
              + ", ".join(f"{r} {100 * s['accuracy']['mean']:.1f}" for r, s in rec["dev"]["emmr"].items())
              + "; TF " + ", ".join(f"{r} {100 * s['accuracy']['mean']:.1f}" for r, s in rec["dev"].get("tf", {}).items())
              + (f"; cross-fitted EMMR {100 * criterion(rec, 'cross_fitted'):.2f}" if "cross_fitted" in rec else "")
              + f" ({rec['seconds']:.0f} s)", flush=True)
    if args.table:
        with open(args.log) as fh:
            print(table([json.loads(line) for line in fh if line.strip()]))


if __name__ == "__main__":
    main()
