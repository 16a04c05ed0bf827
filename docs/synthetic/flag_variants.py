"""Which flag score would rank key-missing records best: variants of the check's score computed from saved EMMR
checkpoints, each scored by AUROC against the generator's key truth on `emmr synth` data (reporting only; run it
on validation data, never to choose on the test split).

For each checkpoint (`emmr compare`'s checkpoints/emmr-seed<N>), on the protocol's masks for seed N at rates
0.1-0.5, over the records missing one modality k (AUROC per rate, averaged over rates and checkpoints):
every variant but argmax_pair is s_k = 1 - sum_c p_full(c) p_without_k(c) (emmr/nn/consistency.py), with p_full
and p_without taken from:
  backbone           the backbone's L_full and L_without_k: what the model computes
  members_mean       the mean over members of each member's own s_k
  backbone_meanpair  the backbone's L_full, the members' mean L_without_k
  ensemble_full      the ensemble's output (Eq. 13, run on every row) as L_full, the backbone's L_without_k
  ensemble_meanpair  the ensemble's output, the members' mean L_without_k
  argmax_pair        1 - p_full(argmax p_without_k), the oracle's form with the backbone's heads
  teacher_pair       the backbone's L_full, the frozen teacher itself as L_without_k: its label distribution on
                     the masked record with the missing modality's part neutralised (what the pair heads are
                     trained to give, emmr/keytruth.py, computed at inference instead of learned)
Decomposition (which head costs what):
  oracle_full        the oracle's posterior as p_full, the backbone's L_without_k
  true_pair          the backbone's L_full, the generator's label_without_k as p_without (one-hot)
  ensemble_true_pair the ensemble's output, the generator's label_without_k
and the oracle's own score (emmr/oracle.py); and how often the backbone's pair head and the teacher give the
generator's label without k (`*_label_agreement`, on the same records). The non-backbone variants need every
member on every record that misses a modality; the model runs the other members on the flagged records only.

  python docs/synthetic/flag_variants.py --data runs/synth/val runs/synth/cmp-s*/checkpoints/emmr-seed*
"""
import argparse
import json

import numpy as np
import torch

from emmr.batch import load_records
from emmr.checkpoint import load_teacher
from emmr.evaluate import protocol_masks
from emmr.metrics import auroc
from emmr.oracle import SynthTruth, oracle_scores
from emmr.scorer import Scorer
from emmr.tensors import model_inputs

RATES = (0.1, 0.2, 0.3, 0.4, 0.5)


def disagreement(p_full: np.ndarray, p_without: np.ndarray) -> np.ndarray:
    """(N, C), (N, M, C) -> (N, M): 1 - sum_c p_full p_without_k."""
    return 1.0 - (p_full[:, None, :] * p_without).sum(axis=-1)


def at_label(p_full: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C), (N, M) labels -> (N, M): 1 - p_full(label_k)."""
    return 1.0 - np.take_along_axis(p_full, labels, axis=1)


def variants(scorer: Scorer, teacher, masked, truth: SynthTruth, oracle) -> tuple[dict[str, np.ndarray], dict]:
    """-> (name -> (N, M) scores, name -> (N, M) labels without k); `oracle` is emmr.oracle.oracle_scores on the
    same masks."""
    part = scorer.standardizer.apply(masked) if scorer.standardizer is not None else masked
    with torch.inference_mode():
        features, lengths = model_inputs(part, scorer.config.modality_names, scorer.device)
        out = scorer.model(features, lengths, mode="all")
        # the teacher with k's part neutral, each k in turn: on a record missing k alone, k's part has no steps
        teacher_pair = teacher.neutralised_logits(features, lengths).float().softmax(-1).numpy()
    probs = {n: (r.full_logits.float().softmax(-1).numpy(), r.without_logits.float().softmax(-1).numpy())
             for n, r in out.runs.items()}
    full, pair = probs[scorer.model.backbone]
    mean_pair = np.mean([p for _, p in probs.values()], axis=0)
    ensemble = out.ensemble_logits.float().softmax(-1).numpy()
    labels = {"pair": pair.argmax(-1), "teacher_pair": teacher_pair.argmax(-1)}
    return {
        "backbone": disagreement(full, pair),
        "members_mean": np.mean([disagreement(f, p) for f, p in probs.values()], axis=0),
        "backbone_meanpair": disagreement(full, mean_pair),
        "ensemble_full": disagreement(ensemble, pair),
        "ensemble_meanpair": disagreement(ensemble, mean_pair),
        "argmax_pair": at_label(full, pair.argmax(-1)),
        "teacher_pair": disagreement(full, teacher_pair),
        "oracle_full": disagreement(oracle.probabilities, pair),
        "true_pair": at_label(full, truth.label_without),
        "ensemble_true_pair": at_label(ensemble, truth.label_without),
    }, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="EMMR checkpoints (folders named ...-seed<N>)")
    p.add_argument("--data", required=True, help="an `emmr synth` folder (validation data)")
    args = p.parse_args()
    torch.set_num_threads(1)
    found: dict[str, list[float]] = {}
    agree: dict[str, list[float]] = {}
    for path in args.checkpoints:
        seed = int(path.rstrip("/").rsplit("seed", 1)[1])
        scorer, teacher = Scorer.load(path), load_teacher(path)
        if scorer.model.ensemble is None:
            raise SystemExit(f"{path}: the model has no ensemble (a single-member method, or its ensemble did not pass "
                             "the gate in training: train with ensemble_gate: false to study it)")
        batch, table = load_records(args.data, scorer.config.modalities, scorer.config.num_classes)
        truth = SynthTruth.from_table(table, scorer.config.modality_names)
        for _, _, drop in protocol_masks(batch.present(), list(RATES), [seed]):
            masked = batch.drop(drop)
            missing = ~masked.present()
            single = missing.sum(axis=1) == 1
            rows, k = np.flatnonzero(single), missing.argmax(axis=1)[single]
            key = truth.key[rows, k]
            oracle = oracle_scores(truth, missing)
            scores, labels = variants(scorer, teacher, masked, truth, oracle)
            for name, score in scores.items():
                found.setdefault(name, []).append(auroc(key, score[rows, k]))
            for name, label in labels.items():
                agree.setdefault(f"{name}_label_agreement", []).append(
                    float((label[rows, k] == truth.label_without[rows, k]).mean()))
            found.setdefault("oracle", []).append(auroc(key, oracle.key_missing_score[rows]))
        print(f"{path}: " + ", ".join(f"{n} {np.mean(v[-len(RATES):]):.4f}" for n, v in found.items()), flush=True)
    summary = {n: float(np.mean(v)) for n, v in found.items()}
    summary.update({f"{n}_over_oracle": v / summary["oracle"] for n, v in list(summary.items()) if n != "oracle"})
    summary.update({n: float(np.mean(v)) for n, v in agree.items()})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
