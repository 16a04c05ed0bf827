"""The paper's evaluation protocol: missing rates 0 to 0.5, several seeds, accuracy and macro-F1 as mean and
standard deviation, and the key-missing flag: how often it fires, its AUROC, precision and recall against the
key-modality truth (`key_<modality>` columns of `emmr synth` data), and accuracy on the records that miss
nothing, miss a modality, miss their key modality, and are flagged.

On `emmr synth` data every figure stands beside its ceiling (`ceiling_<metric>`): the same metric of the
Bayes-optimal oracle (emmr/oracle.py) on the same records and masks; the model's flag is also scored at the
oracle's flag rate (`flag_precision_at_oracle_rate`, `flag_recall_at_oracle_rate`).

Missingness is simulated exactly as in training (emmr/missing.py): records that already miss a modality
keep it missing and count toward the rate. The masks depend only on (seed, rate), so every method sees the
same masks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from emmr.batch import ModalityBatch
from emmr.metrics import accuracy, auroc, confusion, macro_f1, precision_recall, top_fraction
from emmr.missing import DEFAULT_RATES, protocol_rng, simulate_missing
from emmr.oracle import OracleScores, SynthTruth, oracle_flag, oracle_scores
from emmr.scorer import Scorer, Scores

CEILING_METRICS = ("accuracy", "accuracy_complete", "accuracy_missing", "accuracy_key_missing",
                   "accuracy_nonkey_missing", "flag_auroc", "flag_precision", "flag_recall", "flag_rate_missing")


def key_truth(table: pa.Table, names: tuple[str, ...]) -> np.ndarray | None:
    """(N, M) bool from the `key_<modality>` columns, or None when the data carry no truth."""
    cols = [f"key_{n}" for n in names]
    if not all(c in table.schema.names for c in cols):
        return None
    return np.stack([table.column(c).fill_null(False).to_numpy(zero_copy_only=False) for c in cols], axis=1)


def score_all(scorer: Scorer, batch: ModalityBatch, size: int = 1024) -> Scores:
    parts = [scorer.score(batch.take(np.arange(i, min(i + size, len(batch))))) for i in range(0, len(batch), size)]
    return Scores(*(np.concatenate([getattr(p, f) for p in parts]) for f in Scores.__dataclass_fields__))


def protocol_masks(present: np.ndarray, rates, seeds, probs: np.ndarray | None = None):
    """(rate, seed, drop (N, M) bool) for every run of the protocol, the same for every method."""
    for rate in rates:
        for seed in seeds:
            yield rate, seed, simulate_missing(present, rate, protocol_rng(seed, rate), probs)


def _acc(labels, pred, rows) -> float:
    return accuracy(labels[rows], pred[rows]) if rows.any() else float("nan")


def run_metrics(pred: np.ndarray, flag: np.ndarray, score: np.ndarray, labels: np.ndarray, missing: np.ndarray,
                truth: np.ndarray | None, classes: int, label_full: np.ndarray | None = None) -> dict:
    """Metrics of one (rate, seed) run: predictions (N,), flags (N,) bool, flag scores (N,), labels (N,), what
    is missing (N, M), the key truth (N, M) or None."""
    any_missing = missing.any(axis=1)
    out = {
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(labels, pred),
        "missing_fraction": float(any_missing.mean()),
        "accuracy_complete": _acc(labels, pred, ~any_missing),
        "accuracy_missing": _acc(labels, pred, any_missing),
        "flag_rate": float(flag.mean()),  # over all records
        "flag_rate_missing": float(flag[any_missing].mean()) if any_missing.any() else 0.0,
        "accuracy_flagged": _acc(labels, pred, flag),
        "confusion": confusion(labels, pred, classes).tolist(),
    }
    if label_full is not None and flag.any():  # what the ensemble branch changed: the backbone's label there
        out["accuracy_flagged_backbone"] = _acc(labels, label_full, flag)
    if truth is not None:
        single = missing.sum(axis=1) == 1  # truth is defined for one missing modality
        k = missing.argmax(axis=1)
        true_key = truth[np.arange(len(k)), k] & single
        out["flag_precision"], out["flag_recall"] = precision_recall(flag & single, true_key)
        out["flag_auroc"] = auroc(true_key[single], score[single])
        out["key_truth_rate"] = float(true_key[single].mean()) if single.any() else float("nan")
        out["accuracy_key_missing"] = _acc(labels, pred, true_key)
        out["accuracy_nonkey_missing"] = _acc(labels, pred, single & ~true_key)
    return out


def ceilings(s: Scores, oracle: OracleScores, labels: np.ndarray, missing: np.ndarray, truth: np.ndarray,
             classes: int) -> dict:
    """The oracle's figures on the same run as `ceiling_<metric>` (its accuracy on the *model's* flagged records
    for `ceiling_accuracy_flagged`), and the model's flag taken at the oracle's flag rate."""
    o_flag = oracle_flag(oracle, missing)
    o = run_metrics(oracle.label_index, o_flag, oracle.key_missing_score, labels, missing, truth, classes)
    out = {f"ceiling_{k}": o[k] for k in CEILING_METRICS if k in o}
    out["ceiling_accuracy_flagged"] = _acc(labels, oracle.label_index, s.key_missing)
    single = missing.sum(axis=1) == 1
    k = missing.argmax(axis=1)
    true_key = truth[np.arange(len(k)), k] & single
    at_rate = np.zeros(len(labels), dtype=bool)
    at_rate[single] = top_fraction(s.key_missing_score[single], int(o_flag.sum()))
    out["flag_precision_at_oracle_rate"], out["flag_recall_at_oracle_rate"] = precision_recall(at_rate, true_key)
    return out


def evaluate(scorer: Scorer, batch: ModalityBatch, table: pa.Table, rates=DEFAULT_RATES, seeds=range(5),
             probs: np.ndarray | None = None, truth: np.ndarray | None = None) -> dict:
    """-> {"runs": [...], "by_rate": {rate: {metric: {"mean", "std", "values"}}}}.

    `truth` (N, M) bool: the key modalities to score the flag against, when the table carries none (real data:
    the frozen teacher's, emmr.compare.evaluation_truth)."""
    if (batch.labels < 0).any():
        raise ValueError(f"evaluation needs labels; record {batch.ids[np.argmax(batch.labels < 0)]!r} has none")
    names = scorer.config.modality_names
    truth = key_truth(table, names) if truth is None else truth
    synth_truth = SynthTruth.from_table(table, names)
    runs = []
    for rate, seed, drop in protocol_masks(batch.present(), rates, seeds, probs):
        masked = batch.drop(drop)
        s = score_all(scorer, masked)
        missing = ~masked.present()
        run = run_metrics(s.label_index, s.key_missing, s.key_missing_score, batch.labels, missing, truth,
                          scorer.config.num_classes, s.label_full)
        if synth_truth is not None:
            run.update(ceilings(s, oracle_scores(synth_truth, missing), batch.labels, missing, synth_truth.key,
                                scorer.config.num_classes))
        runs.append({"rate": rate, "seed": seed, **run})
    return {"runs": runs, "by_rate": aggregate(runs)}


def aggregate(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds (population std, ddof=0) of every scalar metric, per rate."""
    by_rate: dict = {}
    for rate in sorted({r["rate"] for r in runs}):
        group = [r for r in runs if r["rate"] == rate]
        stats = {}
        keys = dict.fromkeys(k for g in group for k, v in g.items() if isinstance(v, (int, float)))
        for key in keys:
            if key in ("rate", "seed"):
                continue
            values = np.array([g.get(key, float("nan")) for g in group], dtype=np.float64)
            ok = values[~np.isnan(values)]
            stats[key] = {"mean": float(ok.mean()) if len(ok) else float("nan"),
                          "std": float(ok.std()) if len(ok) else float("nan"), "values": values.tolist()}
        stats["confusion"] = np.sum([g["confusion"] for g in group], axis=0).tolist()
        by_rate[f"{rate:g}"] = stats
    return by_rate
