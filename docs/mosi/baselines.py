"""Linear baselines on the CMU-MOSI utterance features: trained on every training video, scored on dev.

The reference points of the data set's README (`../shared/datasets/cmu-mosi-utterance/README.md`) and of
docs/results.md, reproduced from the converted data:

- logistic regression on each modality and each combination (concatenated features), at missing rate 0;
- logistic regression on all three modalities at the protocol's missing rates 0 to 0.5, a missing modality's
  features set to zero (zero imputation), with the very masks `emmr evaluate` draws
  (emmr.evaluate.protocol_masks, seeds 0..4), so the figures sit beside EMMR's record for record;
- the fit check: the same regression cross-validated by video *inside* the training split (5 folds), which
  shows how much better the training rows are separated than dev rows (why no result comes from them).

The regression is scikit-learn's default `LogisticRegression()` written out (binary logistic loss, L2 with
C = 1, intercept not penalised, raw features), minimised to convergence with SciPy's L-BFGS-B. Nothing is
chosen on dev (C is the library default), so the dev figures are already honest; there is nothing to
cross-fit.

  .venv/bin/emmr convert mosi-utterance-csv --src ../shared/datasets/cmu-mosi-utterance --out data/mosi
  .venv/bin/python docs/mosi/baselines.py --data data/mosi --out docs/mosi/baselines.json
"""
import argparse
import itertools
import json

import numpy as np
from scipy.optimize import minimize

from emmr.batch import load_records
from emmr.dataspec import data_spec
from emmr.metrics import accuracy, macro_f1
from emmr.evaluate import protocol_masks
from emmr.missing import DEFAULT_RATES, seeded_rng


def features(batch, names) -> np.ndarray:
    """(N, sum of dims) float64: each modality's single step, concatenated; a missing modality is all zeros."""
    return np.concatenate([batch.features[n][:, 0] for n in names], axis=1).astype(np.float64)


def fit(x: np.ndarray, y: np.ndarray, c: float = 1.0):
    """Binary logistic regression, mean log-loss + ||w||^2 / (2 C N), as scikit-learn's lbfgs solver; -> predict."""
    n, d = x.shape
    sign = 2.0 * y - 1

    def objective(wb):
        w, b = wb[:d], wb[d]
        margin = -sign * (x @ w + b)
        g = -sign / (1 + np.exp(-margin)) / n  # d loss / d z
        loss = np.logaddexp(0, margin).mean() + (w @ w) / (2 * c * n)
        return loss, np.concatenate([x.T @ g + w / (c * n), [g.sum()]])

    res = minimize(objective, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10000, "maxls": 50, "gtol": 1e-8, "ftol": 1e-15})
    w = res.x
    return lambda z: (z @ w[:d] + w[d] > 0).astype(np.int64)


def scores(labels, pred) -> dict:
    return {"accuracy": accuracy(labels, pred), "macro_f1": macro_f1(labels, pred)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output folder of `emmr convert mosi-utterance-csv`")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--seeds", type=int, default=5, help="mask seeds per missing rate (default 5)")
    args = p.parse_args()

    spec = data_spec(args.data)
    train, _ = load_records(f"{args.data}/train", spec.modalities, len(spec.label_names))
    dev, _ = load_records(f"{args.data}/dev", spec.modalities, len(spec.label_names))
    names = [m.name for m in spec.modalities]
    out = {"train_records": len(train), "dev_records": len(dev), "model": "logistic regression, L2 C=1, raw features",
           "single_and_combined_rate0": {}, "all_modalities_by_rate": {}, "fit_check_cv_by_video_in_train": {}}

    for k in range(1, len(names) + 1):
        for combo in itertools.combinations(names, k):
            predict = fit(features(train, combo), train.labels)
            out["single_and_combined_rate0"]["+".join(combo)] = scores(dev.labels, predict(features(dev, combo)))

    predict = fit(features(train, names), train.labels)
    for rate in DEFAULT_RATES:
        runs = []
        for _, _, drop in protocol_masks(dev.present(), [rate], range(args.seeds)):  # the masks every method sees
            runs.append(scores(dev.labels, predict(features(dev.drop(drop), names))))
        out["all_modalities_by_rate"][f"{rate:g}"] = {
            m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs])),
                "values": [r[m] for r in runs]} for m in ("accuracy", "macro_f1")}

    videos = np.array([i.rpartition("_")[0] for i in train.ids])
    uniq = np.unique(videos)
    fold_of = dict(zip(uniq, seeded_rng(0, 31).permutation(len(uniq)) % 5))
    folds = np.array([fold_of[v] for v in videos])
    for combo in [(n,) for n in names] + [tuple(names)]:
        pred = np.empty(len(train), dtype=np.int64)
        for f in range(5):
            inside = folds != f
            pred[~inside] = fit(features(train.take(np.flatnonzero(inside)), combo), train.labels[inside])(
                features(train.take(np.flatnonzero(~inside)), combo))
        out["fit_check_cv_by_video_in_train"]["+".join(combo)] = scores(train.labels, pred)

    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    for name, s in out["single_and_combined_rate0"].items():
        print(f"dev, rate 0, {name:24s} accuracy {s['accuracy']:.3f}  macro-F1 {s['macro_f1']:.3f}")
    for rate, s in out["all_modalities_by_rate"].items():
        print(f"dev, all three, rate {rate:3s} accuracy {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}  "
              f"macro-F1 {s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}")
    for name, s in out["fit_check_cv_by_video_in_train"].items():
        print(f"fit check (5-fold CV by video inside train), {name:24s} accuracy {s['accuracy']:.3f}")


if __name__ == "__main__":
    main()
