"""Model throughput on CPU: records/s of Scorer.score against the path before issue #14, and what running the
ensemble's extra members only on the flagged rows saves.

Issue #14 (`new_over_old`): on the same batch, interleaved,
  new           Scorer.score as it is: length buckets trimmed to their longest record (emmr.batch.length_buckets),
                fused attention (scaled_dot_product_attention, emmr/nn/attention.py), only the slots and heads
                whose results are read (emmr/nn/emmr.py _infer)
  old           the path before: the whole batch at every modality's max_len, torch's own attention, everything
                computed (Scorer.score(batch, trim=False) under emmr.nn.attention.reference())
  fused_only    the whole batch at max_len with fused attention; buckets_only: buckets with torch's attention
Printed: records/s of each, new_over_old (median of per-round ratios of old's seconds over new's), how far the two
agree (largest probability difference; equal labels and flags), and the FLOPs per record that torch's counter
counts at max_len and with each record alone at its own lengths (needed), both as the old path computes, and in
the new path's buckets as it computes (spent; benchmarks/common.py flop_counts).

For each preset (random weights) and for a trained small model, on synthetic records of which ~30 % miss one
modality, three variants of the same scoring call take turns (benchmarks/common.py `interleave`):
  flagged_only  Scorer.score as served: the AE and MMIN members run only on the rows the check flags
                (EMMR.forward(mode="flagged"))
  all_members   the same call with all three members on every row (EMMR.forward(mode="all"))
  backbone      the encoders, the first member and the check only: what a flag rate of 0 would cost
Printed: records/s of flagged_only, the flagged fraction, and the ratios flagged_only / all_members and
backbone / all_members (medians of per-round ratios, with their quartiles in the comments). The cost is
close to linear in the flag rate f, so the ratio at another flag rate is about
backbone_ratio + f * (1 - backbone_ratio); the paper-preset ratio at the trained small model's flag rate is
printed as such an estimate, and measured directly when a trained paper checkpoint is given (--trained-paper).

A random-weight model flags a different fraction of rows than a trained one, hence the trained small model:
trained with `emmr train --preset small --config benchmarks/keep_ensemble.yaml` (ensemble kept) on synthetic data the first time (cached in --work-dir, ~15 min
on two busy cores; --no-trained skips it).

Threads: the figures use ONE torch thread (--threads 1). On a machine whose cores are shared, torch's
OpenMP threads wait for each other at every operation while another process holds a core; the run also
measures --compare-threads threads against one, interleaved, and prints the speedup (below 1 = slower).

  .venv/bin/python benchmarks/model_throughput.py [--json runs/bench/model_throughput.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import (calls_for, emit, environment, flop_counts, interleave, median, missing_fraction,  # noqa: E402
                               note, quartiles, random_checkpoint, ratio, ratios, spread, synthetic_batch, tile,
                               write_json)
from emmr import checkpoint  # noqa: E402
from emmr.config import preset  # noqa: E402
from emmr.nn import attention  # noqa: E402
from emmr.nn.emmr import EMMR, EMMROutput  # noqa: E402
from emmr.scorer import Scorer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AllMembers(nn.Module):
    """The model with all three members on every row (what the served model would cost without the check)."""

    def __init__(self, model: EMMR):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, features, lengths, mode=None) -> EMMROutput:
        return self.inner(features, lengths, mode="all")


class Backbone(nn.Module):
    """Encoders, the first member and the consistency check only: the cost at a flag rate of 0."""

    def __init__(self, model: EMMR):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, features, lengths, mode=None) -> EMMROutput:
        return self.inner(features, lengths, mode="backbone")


def variants(scorer: Scorer, batch) -> dict:
    all_members = Scorer(AllMembers(scorer.model), scorer.meta, scorer.device)
    backbone = Scorer(Backbone(scorer.model), scorer.meta, scorer.device)
    return {"flagged_only": lambda: scorer.score(batch), "all_members": lambda: all_members.score(batch),
            "backbone": lambda: backbone.score(batch)}


def measure(tag: str, scorer: Scorer, batch, rounds: int, sample_s: float, results: dict) -> dict:
    """Interleave the three variants on `batch`; print and return the figures under `tag`."""
    scores = scorer.score(batch)
    flagged = float(scores.key_missing.mean())
    fns = variants(scorer, batch)
    calls = calls_for(fns["flagged_only"], sample_s) if sample_s > 0 else 1
    load_before = os.getloadavg()[0]
    times = interleave(fns, rounds=rounds, warmup=1, calls=calls)
    per_s = len(batch) / median(times["flagged_only"])
    r_flagged = ratio(times["flagged_only"], times["all_members"])
    r_backbone = ratio(times["backbone"], times["all_members"])
    q_flagged = quartiles(ratios(times["flagged_only"], times["all_members"]))
    q_backbone = quartiles(ratios(times["backbone"], times["all_members"]))
    note(f"{tag}: batch {len(batch)}, {rounds} rounds of {calls} calls, load average {load_before:.1f} -> "
         f"{os.getloadavg()[0]:.1f}; seconds per batch (median) "
         + ", ".join(f"{k} {median(v):.3f} (spread {spread(v):.0%})" for k, v in times.items()))
    note(f"{tag}: per-round ratios to all_members, quartiles: flagged_only {q_flagged[0]:.3f}..{q_flagged[1]:.3f}, "
         f"backbone {q_backbone[0]:.3f}..{q_backbone[1]:.3f}")
    fig = {
        "batch_size": len(batch),
        "missing_fraction": missing_fraction(batch),
        "flagged_fraction": flagged,
        "records_per_s": per_s,
        "records_per_s_best_round": len(batch) / min(times["flagged_only"]),
        "calls_per_sample": calls,
        "load_average_1m": [load_before, os.getloadavg()[0]],
        "all_members_records_per_s": len(batch) / median(times["all_members"]),
        "flagged_only_over_all_members": r_flagged,
        "backbone_over_all_members": r_backbone,
        "flagged_only_over_all_members_quartiles": q_flagged,
        "backbone_over_all_members_quartiles": q_backbone,
        "linear_model_prediction": r_backbone + flagged * (1 - r_backbone),
        "seconds": {k: v for k, v in times.items()},
    }
    emit(f"missing_fraction_{tag}", fig["missing_fraction"], results)
    emit(f"flagged_fraction_{tag}", flagged, results)
    emit(f"backbone_over_all_members_{tag}", r_backbone, results)
    return fig


def new_over_old(tag: str, scorer: Scorer, batch, rounds: int, sample_s: float, results: dict) -> dict:
    """Scorer.score (length buckets, fused attention) against the path before issue #14, interleaved on `batch`."""

    def old():
        with attention.reference():
            return scorer.score(batch, trim=False)

    def buckets_only():
        with attention.reference():
            return scorer.score(batch)

    fns = {"new": lambda: scorer.score(batch), "old": old, "fused_only": lambda: scorer.score(batch, trim=False),
           "buckets_only": buckets_only}
    want, got = old(), scorer.score(batch)
    agree = {"max_abs_probability_difference": float(np.abs(got.probabilities - want.probabilities).max()),
             "label_agreement": float((got.label_index == want.label_index).mean()),
             "flag_agreement": float((got.key_missing == want.key_missing).mean()),
             "flagged_fraction": float(want.key_missing.mean())}
    calls = calls_for(fns["new"], sample_s) if sample_s > 0 else 1
    load_before = os.getloadavg()[0]
    times = interleave(fns, rounds=rounds, warmup=1, calls=calls)
    flops = flop_counts(scorer, batch)
    names = scorer.config.modality_names
    plan = scorer.plan(np.stack([batch.lengths[n] for n in names], axis=1))
    fig = {"batch_size": len(batch), "rounds": rounds, "calls_per_sample": calls, "buckets": len(plan),
           "bucket_rows": [len(b.rows) for b in plan],
           "load_average_1m": [load_before, os.getloadavg()[0]], "agreement": agree, "flops_per_record": flops,
           "records_per_s": {k: len(batch) / median(v) for k, v in times.items()}, "seconds": times,
           **{f"{k}_over_old": ratio(times["old"], v) for k, v in times.items() if k != "old"},
           "new_over_old_quartiles": quartiles(ratios(times["old"], times["new"]))}
    q = fig["new_over_old_quartiles"]
    note(f"{tag} new vs old: batch {len(batch)} in {len(plan)} buckets of {min(fig['bucket_rows'])}-"
         f"{max(fig['bucket_rows'])} rows, {rounds} rounds of {calls} "
         f"calls, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; records/s (median) "
         + ", ".join(f"{k} {v:.1f}" for k, v in fig["records_per_s"].items())
         + f"; new_over_old quartiles {q[0]:.2f}..{q[1]:.2f}; outputs: " + ", ".join(f"{k} {v:.3g}" for k, v in agree.items()))
    note(f"{tag} FLOPs per record: at max_len {flops['max_len']:.4g}, spent in buckets {flops['spent']:.4g}, "
         f"needed (each record at its own lengths) {flops['needed']:.4g}")
    for k in ("fused_only", "buckets_only"):
        emit(f"{k}_over_old_{tag}", fig[f"{k}_over_old"], results)
    emit(f"max_abs_probability_difference_new_vs_old_{tag}", agree["max_abs_probability_difference"], results)
    emit(f"label_agreement_new_vs_old_{tag}", agree["label_agreement"], results)
    emit(f"flag_agreement_new_vs_old_{tag}", agree["flag_agreement"], results)
    emit(f"flops_spent_over_needed_{tag}", flops["spent"] / flops["needed"], results)
    emit(f"flops_max_len_over_needed_{tag}", flops["max_len"] / flops["needed"], results)
    return fig


def batch_sweep(tag: str, scorer: Scorer, batch, sizes: list[int], rounds: int, results: dict) -> dict:
    """records/s of Scorer.score at several batch sizes, interleaved; each sample scores the same
    max(sizes) records in slices of the size."""
    total = max(sizes)
    batch = tile(batch, total)

    def in_slices(n):
        def call():
            for i in range(0, total, n):
                scorer.score(batch.take(np.arange(i, min(i + n, total))))
        return call

    times = interleave({n: in_slices(n) for n in sizes}, rounds=rounds, warmup=1)
    out = {}
    for n in sizes:
        out[n] = {"records_per_s": total / median(times[n]),
                  "speedup_over_largest_quartiles": quartiles(ratios(times[total], times[n]))}
        emit(f"sweep_records_per_s_{tag}_b{n}", out[n]["records_per_s"], results)
    return out


def flag_rates(tag: str, scorer: Scorer, records: int, missing_rate: float, results: dict) -> dict:
    """The flagged fraction on a larger sample than one batch, beside the generator's key-missing truth."""
    batch, truth = synthetic_batch(scorer.config, records, missing_rate=missing_rate, seed=4, truth=True)
    flagged = np.concatenate([scorer.score(batch.take(np.arange(i, min(i + 256, records)))).key_missing
                              for i in range(0, records, 256)])
    fig = {"records": records, "flagged_fraction": float(flagged.mean()), "key_missing_truth_fraction": float(truth.mean()),
           "flag_precision": float((flagged & truth).sum() / max(flagged.sum(), 1)),
           "flag_recall": float((flagged & truth).sum() / max(truth.sum(), 1))}
    for k in ("flagged_fraction", "key_missing_truth_fraction"):
        emit(f"{k}_{tag}_{records}_records", fig[k], results)
    return fig


def thread_speedup(tag: str, scorer: Scorer, batch, threads: int, rounds: int, sample_s: float, results: dict) -> dict:
    """records/s with `threads` torch threads over records/s with 1, the two settings interleaved."""
    before = torch.get_num_threads()

    def with_threads(n):
        def call():
            torch.set_num_threads(n)
            return scorer.score(batch)
        return call

    fns = {"1": with_threads(1), str(threads): with_threads(threads)}
    try:
        calls = calls_for(fns["1"], sample_s) if sample_s > 0 else 1
        times = interleave(fns, rounds=rounds, warmup=1, calls=calls)
    finally:
        torch.set_num_threads(before)
    speedup = ratio(times["1"], times[str(threads)])
    q = quartiles(ratios(times["1"], times[str(threads)]))
    note(f"{tag} threads: batch {len(batch)}, {rounds} rounds of {calls} calls; seconds per batch (median) "
         + ", ".join(f"{k} thread(s) {median(v):.3f} (spread {spread(v):.0%})" for k, v in times.items()))
    emit(f"threads_{threads}_over_1_speedup_{tag}", speedup, results)
    return {"threads": threads, "speedup": speedup, "speedup_quartiles": q, "seconds": times,
            "records_per_s": {k: len(batch) / median(v) for k, v in times.items()}}


def trained_small(work_dir: str, epochs: int, records: int, threads: int) -> str:
    """A small-preset checkpoint trained on synthetic data with the `emmr` CLI (cached in work_dir; trained
    again when the cached one is not readable by this code, e.g. after a checkpoint format change)."""
    ckpt = os.path.join(work_dir, "small-trained")
    if os.path.exists(os.path.join(ckpt, "checkpoint.json")):
        try:
            checkpoint.read_meta(ckpt)
            note(f"reusing the trained small model in {ckpt}")
            return ckpt
        except checkpoint.CheckpointError as e:
            note(f"training the small model again: {e}")
            shutil.rmtree(ckpt)
    data = os.path.join(work_dir, "small-train-data")
    emmr = [sys.executable, "-m", "emmr.cli"]
    started = time.perf_counter()
    subprocess.run(emmr + ["synth", "--out", data, "--records", str(records), "--seed", "11", "--preset", "small"],
                   check=True, cwd=ROOT)
    subprocess.run(emmr + ["train", "--data", data, "--out", ckpt, "--preset", "small", "--epochs", str(epochs),
                           "--teacher-epochs", str(max(1, epochs // 2)), "--seed", "0", "--threads", str(threads),
                           "--config", os.path.join(ROOT, "benchmarks", "keep_ensemble.yaml"), "--no-progress"],
                   check=True, cwd=ROOT)
    note(f"trained the small model in {time.perf_counter() - started:.0f} s: {ckpt}")
    return ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="paper,small", help="comma-separated presets (random weights)")
    p.add_argument("--batch-paper", type=int, default=64, help="batch size for the paper preset (default 64)")
    p.add_argument("--batch-small", type=int, default=256, help="batch size for the small preset (default 256)")
    p.add_argument("--missing-rate", type=float, default=0.3, help="records missing one modality (default 0.3)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds for the paper preset (default 9)")
    p.add_argument("--rounds-small", type=int, default=15, help="interleaved rounds for the small models (default 15)")
    p.add_argument("--sample-s", type=float, default=1.0,
                   help="make each timed sample of the small models at least this long, by repeating calls (default 1)")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "bench"), help="checkpoints (default runs/bench)")
    p.add_argument("--trained-small", help="a trained small checkpoint to use instead of training one")
    p.add_argument("--no-trained", action="store_true", help="skip the trained small model")
    p.add_argument("--trained-paper", help="a trained paper-preset checkpoint to measure as well (optional)")
    p.add_argument("--sweep", help="also compare these batch sizes, e.g. 8,16,64 (random-weight presets; off by default)")
    p.add_argument("--flag-sample", type=int, default=512,
                   help="records on which a trained model's flag rate is also counted (default 512)")
    p.add_argument("--train-epochs", type=int, default=8)
    p.add_argument("--train-records", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the main figures (default 1: see docs/performance.md)")
    p.add_argument("--compare-threads", type=int, default=os.cpu_count() or 1,
                   help="also measure this many threads against 1 (default: the CPU count; 0 = skip)")
    p.add_argument("--json", help="also write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment()
    note("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results: dict = {}
    details: dict = {"environment": env, "missing_rate": args.missing_rate}

    for name in [s for s in args.presets.split(",") if s]:
        config = preset(name)
        size = args.batch_paper if name == "paper" else args.batch_small
        ckpt = random_checkpoint(name, os.path.join(args.work_dir, f"{name}-random"))
        scorer = Scorer.load(ckpt, "cpu")
        batch = synthetic_batch(config, size, missing_rate=args.missing_rate, seed=2)
        rounds = args.rounds if name == "paper" else args.rounds_small
        sample_s = 0.0 if name == "paper" else args.sample_s
        details[name] = measure(name, scorer, batch, rounds, sample_s, results)
        details[name]["new_over_old"] = new_over_old(name, scorer, batch, rounds, sample_s, results)
        if args.sweep:
            details[name]["batch_sweep"] = batch_sweep(name, scorer, batch, [int(x) for x in args.sweep.split(",")],
                                                       rounds, results)
        if args.compare_threads and args.compare_threads != args.threads:
            details[name]["thread_scaling"] = thread_speedup(name, scorer, batch, args.compare_threads, rounds,
                                                             sample_s, results)

    if not args.no_trained:
        ckpt = args.trained_small or trained_small(args.work_dir, args.train_epochs, args.train_records, args.threads)
        scorer = Scorer.load(ckpt, "cpu")
        batch = synthetic_batch(scorer.config, args.batch_small, missing_rate=args.missing_rate, seed=2)
        fig = measure("small_trained", scorer, batch, args.rounds_small, args.sample_s, results)
        scores = scorer.score(batch)
        fig["accuracy"] = float((scores.label_index == batch.labels).mean())
        fig["checkpoint"] = ckpt
        fig["validation"] = scorer.meta.get("metrics", {}).get("validation")
        details["small_trained"] = fig
        emit("accuracy_small_trained", fig["accuracy"], results)
        fig["flag_rates"] = flag_rates("small_trained", scorer, args.flag_sample, args.missing_rate, results)
        if "paper" in details and not args.trained_paper:
            paper, f = details["paper"], fig["flagged_fraction"]
            est = paper["backbone_over_all_members"] + f * (1 - paper["backbone_over_all_members"])
            details["paper"]["estimate_at_trained_flag_rate"] = {"flag_rate": f, "ratio": est}
            emit("flagged_only_over_all_members_paper_est_at_trained_flag_rate", est, results)

    if args.trained_paper:
        scorer = Scorer.load(args.trained_paper, "cpu")
        batch = synthetic_batch(scorer.config, args.batch_paper, missing_rate=args.missing_rate, seed=2)
        fig = measure("paper_trained", scorer, batch, args.rounds, 0.0, results)
        fig["new_over_old"] = new_over_old("paper_trained", scorer, batch, args.rounds, 0.0, results)
        fig["accuracy"] = float((scorer.score(batch).label_index == batch.labels).mean())
        fig["checkpoint"] = args.trained_paper
        fig["validation"] = scorer.meta.get("metrics", {}).get("validation")
        details["paper_trained"] = fig
        emit("accuracy_paper_trained", fig["accuracy"], results)
        fig["flag_rates"] = flag_rates("paper_trained", scorer, args.flag_sample, args.missing_rate, results)

    # The headline lines last.
    order = ("paper", "small", "small_trained", "paper_trained")
    for name in order:
        if name in details:
            emit(f"model_records_per_s_{name}_cpu", details[name]["records_per_s"], results)
    for name in order:
        if name in details:
            emit(f"flagged_only_over_all_members_{name}", details[name]["flagged_only_over_all_members"], results)
    for name in order:
        if "new_over_old" in details.get(name, {}):
            emit(f"new_over_old_{name}", details[name]["new_over_old"]["new_over_old"], results)
    if args.json:
        write_json(args.json, {"results": results, "details": details})
    return 0


if __name__ == "__main__":
    sys.exit(main())
