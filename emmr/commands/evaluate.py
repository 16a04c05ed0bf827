"""Evaluate a checkpoint with the paper's protocol: missing rates 0 to 0.5, several seeds, accuracy and
macro-F1 (mean ± std), the key-missing flag's rate and, on synthetic data, its precision and recall.

Writes metrics.json, metrics.md, metrics.csv and PNG plots to --out. Example:
  emmr evaluate --checkpoint runs/ckpt --data data/test --out runs/eval --seeds 5
"""

from __future__ import annotations

import argparse
import logging
import os

from emmr.commands.options import add_protocol_arguments, check_output_folder, parse_rates
from emmr.progress import Progress

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (local or gs://)")
    p.add_argument("--data", required=True, help="folder (searched recursively), glob or file of labelled input v1 Parquet")
    p.add_argument("--out", required=True, help="folder for metrics.json, tables and plots")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; cuda without a GPU is an error (default cpu)")
    add_protocol_arguments(p)


class CountingScorer:
    """A Scorer that reports the records it scores to a Progress (evaluate() itself stays unaware of progress)."""

    def __init__(self, scorer, progress):
        self._scorer, self._progress = scorer, progress

    def score(self, batch):
        scores = self._scorer.score(batch)
        self._progress.update(len(batch))
        return scores

    def __getattr__(self, name):
        return getattr(self._scorer, name)


def run(args: argparse.Namespace) -> int:
    from emmr.batch import load_records
    from emmr.evaluate import evaluate
    from emmr.report import already_missing_note, write_all
    from emmr.scorer import Scorer

    check_output_folder(args.out, "--out")
    rates = parse_rates(args.missing_rates)
    scorer = Scorer.load(args.checkpoint, args.device)
    batch, table = load_records(args.data, scorer.config.modalities, scorer.config.num_classes)
    runs = len(rates) * args.seeds
    with Progress(f"evaluating {runs} runs (rates x seeds)", total=runs * len(batch), logger=log, summary=True) as meter:
        result = evaluate(CountingScorer(scorer, meter), batch, table, rates=rates, seeds=range(args.seeds))
    method = scorer.meta.get("method", "model")
    paths = write_all({method: result}, args.out, f"Evaluation of {method} ({scorer.version}) on {args.data}",
                      list(scorer.config.label_names),
                      extra={"checkpoint": args.checkpoint, "model_version": scorer.version, "data": args.data,
                             "records": len(batch), "rates": rates, "seeds": args.seeds})
    for rate, stats in result["by_rate"].items():
        flag = ""
        if "flag_precision" in stats:
            flag = f", flag precision {stats['flag_precision']['mean']:.3f} recall {stats['flag_recall']['mean']:.3f}"
        log.info("missing rate %s (records missing a modality: %.3f): accuracy %.4f ± %.4f, macro-F1 %.4f ± %.4f, "
                 "flag rate %.3f%s", rate, stats["missing_fraction"]["mean"], stats["accuracy"]["mean"],
                 stats["accuracy"]["std"], stats["macro_f1"]["mean"], stats["macro_f1"]["std"], stats["flag_rate"]["mean"],
                 flag)
    note = already_missing_note({method: result})
    if note:
        log.warning("%s", note)
    log.info("wrote %s", ", ".join(os.path.join(args.out, p) for p in paths))
    return 0
