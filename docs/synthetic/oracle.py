"""What any model can know when one modality is missing, on `emmr synth` data (model-independent).

On this generative model (emmr/synth.py) the features of the observed modalities carry at most the shared
factors z and their own evidence e_i, e_j; the missing modality's evidence is e_k = rho * z_0 +
sqrt(1 - rho^2) * eps_k, and its private part eps_k is independent of everything observed. So, given the
best possible information (z_0, e_i, e_j exactly, no feature noise), e_k ~ N(rho * z_0, 1 - rho^2), and
    P(label = c | observed) and P(k is key | observed)
are known in closed form. This script draws records from the generative model (not the test split) and
reports the Bayes-optimal classifier's accuracy on records missing one modality (an upper bound for every
method, reconstruction or not), split by key / not key, and the precision and recall of the best possible
key-missing flags: P(key) > 0.5, and the top fraction of records by P(key) at given recalls.
The evidences are exchangeable across modalities (the gains act on the features only), so one dropped
modality stands for all.

  python docs/synthetic/oracle.py --out docs/synthetic/oracle.json
"""
import argparse
import json
import math

import numpy as np
from scipy.special import ndtr

from emmr.synth import SynthParams, classify, threshold

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--records", type=int, default=1_000_000)
p.add_argument("--classes", type=int, default=3)
p.add_argument("--rho", type=float, default=0.6)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
args = p.parse_args()

params = SynthParams(records=args.records, classes=args.classes, rho=args.rho)
tau, rho, n = threshold(params, 3), args.rho, args.records
rng = np.random.default_rng(args.seed)
z0 = rng.standard_normal(n)
e = rho * z0[:, None] + math.sqrt(1 - rho**2) * rng.standard_normal((n, 3))  # modality k = 2 is dropped
label = classify(e.mean(axis=1), args.classes, tau)
others = classify(e[:, :2].mean(axis=1), args.classes, tau)
key = label != others

# s = (e_0 + e_1 + e_k) / 3 with e_k ~ N(rho z0, 1 - rho^2): class probabilities of s given the observed.
loc, sd = (e[:, 0] + e[:, 1] + rho * z0) / 3, math.sqrt(1 - rho**2) / 3
if args.classes == 2:
    probs = np.stack([ndtr((0 - loc) / sd), 1 - ndtr((0 - loc) / sd)], axis=1)
else:
    lo, hi = ndtr((-tau - loc) / sd), ndtr((tau - loc) / sd)
    probs = np.stack([lo, hi - lo, 1 - hi], axis=1)
bayes = probs.argmax(axis=1)
p_key = 1 - probs[np.arange(n), others]


def pr(flag):
    tp = int((flag & key).sum())
    return {"flag_rate": float(flag.mean()), "precision": tp / max(int(flag.sum()), 1), "recall": tp / int(key.sum())}


out = {"records": n, "classes": args.classes, "rho": rho, "tau": tau, "key_truth_rate": float(key.mean()),
       "bayes_accuracy_missing": float((bayes == label).mean()),
       "bayes_accuracy_key_missing": float((bayes[key] == label[key]).mean()),
       "bayes_accuracy_nonkey_missing": float((bayes[~key] == label[~key]).mean()),
       "others_label_accuracy": float((others == label).mean()),
       "flag_p_key_over_half": pr(p_key > 0.5), "flag_at_recall": {}}
cum_tp = np.cumsum(key[np.argsort(-p_key, kind="stable")])
for target in (0.15, 0.25, 0.5):
    i = int(np.searchsorted(cum_tp, target * key.sum()))
    out["flag_at_recall"][f"{target:g}"] = {"flag_rate": (i + 1) / n, "precision": float(cum_tp[i] / (i + 1)), "recall": target}
out["p_key_quantiles"] = {q: float(np.quantile(p_key, float(q))) for q in ("0.5", "0.9", "0.99", "0.999")}
with open(args.out, "w") as fh:
    json.dump(out, fh, indent=1)
print(json.dumps(out, indent=1))
