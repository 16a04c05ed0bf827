"""The best possible figures on `emmr synth` data: the Bayes-optimal classifier and key-missing detector that
know the generating model (emmr/synth.py) and everything the observed modalities carry (z and their evidence).

No model can beat them: a model sees only the observed modalities' noisy features, which carry at most z and
their own evidence, and the missing modality's private part is independent of both. On records that miss
nothing the oracle knows the label exactly (a ceiling of 1, loose: feature noise makes the true ceiling lower).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from emmr import synth


@dataclass(frozen=True)
class SynthTruth:
    """The ground truth a synthetic file carries, as arrays aligned with its rows."""

    params: synth.SynthParams
    tau: float
    latent: np.ndarray  # (N, K)
    evidence: np.ndarray  # (N, M)
    key: np.ndarray  # (N, M) bool
    label_without: np.ndarray  # (N, M)

    @classmethod
    def from_table(cls, table: pa.Table, names: tuple[str, ...]) -> "SynthTruth | None":
        """None when the table is not `emmr synth` v2 output (no parameters in its schema, or no latents)."""
        found = synth.params_from_schema(table.schema)
        if found is None or "latent" not in table.schema.names:
            return None
        params, tau = found
        col = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
        latent = np.stack(table.column("latent").to_pylist()).astype(np.float64)
        return cls(params=params, tau=tau, latent=latent,
                   evidence=np.stack([col(f"evidence_{n}") for n in names], axis=1).astype(np.float64),
                   key=np.stack([col(f"key_{n}") for n in names], axis=1).astype(bool),
                   label_without=np.stack([col(f"label_without_{n}") for n in names], axis=1))


@dataclass
class OracleScores:
    probabilities: np.ndarray  # (N, C): P(label | what the observed modalities carry)
    label_index: np.ndarray  # (N,) Bayes decision
    key_missing_score: np.ndarray  # (N,) P(the missing modality is key); 0 where nothing or several are missing


def oracle_scores(truth: SynthTruth, missing: np.ndarray) -> OracleScores:
    """missing (N, M) bool -> the oracle's predictions for records missing exactly those modalities."""
    probs = synth.posterior(truth.params, truth.latent, truth.evidence, missing, truth.tau)
    single = missing.sum(axis=1) == 1
    k = missing.argmax(axis=1)
    rows = np.arange(len(k))
    p_key = np.where(single, 1.0 - probs[rows, truth.label_without[rows, k]], 0.0)
    return OracleScores(probabilities=probs, label_index=probs.argmax(axis=1), key_missing_score=p_key)


def oracle_flag(o: OracleScores, missing: np.ndarray) -> np.ndarray:
    """The Bayes decision: flag a record missing one modality when that modality is more likely key than not."""
    return (o.key_missing_score > 0.5) & (missing.sum(axis=1) == 1)


def present_modalities(table: pa.Table, names: tuple[str, ...]) -> np.ndarray:
    """(N, M) bool: which modalities each record has (a null or empty column is missing)."""
    import pyarrow.compute as pc

    return np.stack([pc.fill_null(pc.list_value_length(table.column(n)), 0).to_numpy() > 0 for n in names], axis=1)


def oracle_protocol(table: pa.Table, rates, seeds) -> dict:
    """The oracle's figures under the evaluation protocol (the same masks as `emmr evaluate`):
    evaluate()-shaped {"runs", "by_rate"}."""
    from emmr.evaluate import aggregate, protocol_masks, run_metrics

    names = tuple(json.loads(table.schema.metadata[synth.META_KEY])["modalities"])
    truth = SynthTruth.from_table(table, names)
    if truth is None:
        raise ValueError("the oracle needs data written by `emmr synth` (generator v2: parameters in the schema "
                         "metadata and a `latent` column)")
    labels = table.column("label").to_numpy()
    present = present_modalities(table, names)
    runs = []
    for rate, seed, drop in protocol_masks(present, rates, seeds):
        missing = ~present | drop
        o = oracle_scores(truth, missing)
        run = run_metrics(o.label_index, oracle_flag(o, missing), o.key_missing_score, labels, missing, truth.key,
                          truth.params.classes)
        runs.append({"rate": rate, "seed": seed, **run})
    return {"runs": runs, "by_rate": aggregate(runs)}
