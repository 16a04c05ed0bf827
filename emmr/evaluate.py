"""The paper's evaluation protocol: missing rates 0 to 0.5, several seeds, accuracy and macro-F1 as mean and
standard deviation, how often the key-missing flag fires and, where the data carry ground truth
(`key_<modality>` columns from `emmr synth`), its precision and recall against the true key modality.

Missingness is simulated exactly as in training (emmr/missing.py): records that already miss a modality
keep it missing and count toward the rate. The masks depend only on (seed, rate), so every method sees the
same masks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from emmr.batch import ModalityBatch
from emmr.metrics import accuracy, confusion, macro_f1, precision_recall
from emmr.missing import DEFAULT_RATES, seeded_rng, simulate_missing
from emmr.scorer import Scorer, Scores


def key_truth(table: pa.Table, names: tuple[str, ...]) -> np.ndarray | None:
    """(N, M) bool from the `key_<modality>` columns, or None when the data carry no truth."""
    cols = [f"key_{n}" for n in names]
    if not all(c in table.schema.names for c in cols):
        return None
    return np.stack([table.column(c).fill_null(False).to_numpy(zero_copy_only=False) for c in cols], axis=1)


def score_all(scorer: Scorer, batch: ModalityBatch, size: int = 1024) -> Scores:
    parts = [scorer.score(batch.take(np.arange(i, min(i + size, len(batch))))) for i in range(0, len(batch), size)]
    return Scores(*(np.concatenate([getattr(p, f) for p in parts]) for f in Scores.__dataclass_fields__))


def run_metrics(scores: Scores, labels: np.ndarray, missing: np.ndarray, truth: np.ndarray | None, classes: int) -> dict:
    """Metrics of one (rate, seed) run."""
    pred = scores.label_index
    any_missing = missing.any(axis=1)
    out = {
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(labels, pred),
        "missing_fraction": float(any_missing.mean()),
        "flag_rate": float(scores.key_missing.mean()),  # over all records
        "flag_rate_missing": float(scores.key_missing[any_missing].mean()) if any_missing.any() else 0.0,
        "ensemble_rate": float(scores.ensemble_used.mean()),
        "confusion": confusion(labels, pred, classes).tolist(),
    }
    flagged = scores.key_missing
    if flagged.any():  # what the ensemble branch changed: the final label against the backbone's (Eq. 8) there
        out["accuracy_flagged"] = accuracy(labels[flagged], pred[flagged])
        out["accuracy_flagged_backbone"] = accuracy(labels[flagged], scores.label_full[flagged])
    if truth is not None:
        single = missing.sum(axis=1) == 1  # truth is defined for one dropped modality
        k = missing.argmax(axis=1)
        true_key = truth[np.arange(len(k)), k] & single
        flag = scores.key_missing & single
        out["flag_precision"], out["flag_recall"] = precision_recall(flag, true_key)
        out["key_truth_rate"] = float(true_key[single].mean()) if single.any() else float("nan")
        hit = flag & true_key
        out["key_modality_accuracy"] = float((scores.key_modality[hit] == k[hit]).mean()) if hit.any() else float("nan")
        if any_missing.any():  # accuracy where the dropped modality was key / was not
            out["accuracy_key_missing"] = accuracy(labels[true_key], pred[true_key]) if true_key.any() else float("nan")
            rest = single & ~true_key
            out["accuracy_nonkey_missing"] = accuracy(labels[rest], pred[rest]) if rest.any() else float("nan")
    return out


def evaluate(scorer: Scorer, batch: ModalityBatch, table: pa.Table, rates=DEFAULT_RATES, seeds=range(5),
             probs: np.ndarray | None = None) -> dict:
    """-> {"runs": [...], "by_rate": {rate: {metric: {"mean", "std", "values"}}}}."""
    if (batch.labels < 0).any():
        raise ValueError(f"evaluation needs labels; record {batch.ids[np.argmax(batch.labels < 0)]!r} has none")
    truth = key_truth(table, scorer.config.modality_names)
    classes = scorer.config.num_classes
    runs = []
    for r_index, rate in enumerate(rates):
        for seed in seeds:
            drop = simulate_missing(batch.present(), rate, seeded_rng(seed, 1000 + r_index), probs)
            masked = batch.drop(drop)
            scores = score_all(scorer, masked)
            runs.append({"rate": rate, "seed": seed, **run_metrics(scores, batch.labels, ~masked.present(), truth, classes)})
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
