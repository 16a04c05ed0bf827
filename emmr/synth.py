"""Synthetic input v1 records with planted key modalities and exact ground truth (generator v2).

Generative model (one record; `m` ranges over the M modalities):

1. Shared latent factors z ~ N(0, I_K). z_0 is a shared sentiment factor; z_1 .. z_{K-1} are content factors.
2. Each modality's sentiment evidence has three parts,
       e_m = a * z_0  +  b * h_m(z)  +  c * eps_m,      eps_m ~ N(0, 1),   a^2 + b^2 + c^2 = 1,
   a linear shared part (`shared`, a), a *nonlinear* shared part (`nonlinear`, b) and a private part
   (c = sqrt(1 - a^2 - b^2)). h_m(z) = z_i * z_j is the product of a pair of content factors of its own
   (mean 0, variance 1, uncorrelated with every linear function of z): the other modalities reveal z, so a
   model that reconstructs the missing modality's evidence as a nonlinear function of what they show gains
   over one that does not (the room reconstruction has), while eps_m is private (nothing can recover it).
3. The label is the class of the mean evidence, s = mean_m e_m: binary `s > 0`, or with three classes
   negative / neutral / positive split at -tau and +tau (tau makes the classes about equal).
   **Key modality.** The label *without* k is the label of the record with k neutralised (its evidence set to
   its mean, 0): the class of (sum_{j != k} e_j) / M. Modality k is key when the two differ: neutralising it
   flips the label. This is the definition the model's check and its training target use on real data (the
   frozen teacher's prediction with k replaced by a neutral value, docs/model.md), written out exactly here:
   `label_without_<m>` and `key_<m>`, for every modality whether dropped or not.
   **What can be known without k.** Given z and the other evidences (everything the observed modalities'
   features carry), e_k ~ N(a z_0 + b h_k(z), c^2), so the class probabilities of the full label and the
   probability that k is key are closed-form (`posterior`): `p_key_<m>` is that probability. The latent z is
   written out (`latent`) so `emmr oracle` can compute the Bayes-optimal figures for any missingness.
4. Features: a sequence of L_m steps (L_m uniform in [ceil(max_len / 2), max_len], the rest is padding),
   step t of modality m being
       x_{m,t} = A_m^T z + g_m * e_m * w_t * u_m + noise,   noise ~ N(0, sigma^2 I)
   with A_m (K x dim) a mixing of the latent factors (what lets the others reveal z), u_m a sentiment direction
   (norm sqrt(dim)), g_m the modality's reliability, and w_t a bump at a random step, normalised to mean 1
   over the record's steps (evidence spread over time, so attention must look). A_m, u_m and g_m form the
   *world*: fixed by `world_seed`, shared by every split.
5. Missingness: round(missing_rate * N) records, chosen at random, drop one modality (uniform): its column
   is null and `dropped` names it. Their truth still describes every modality.

The generator's parameters travel in the Parquet schema metadata (`emmr.synth`, JSON), so the truth can be
recomputed from a written file alone.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import ndtr

from emmr.batch import modality_array
from schemas.arrow import TIMESTAMP, input_schema
from schemas.modality import ModalitySpec

TAU_QUANTILE = 0.4307  # Phi^-1(2/3): +-tau at this many standard deviations split N(0, s^2) into thirds
BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)
META_KEY = b"emmr.synth"


@dataclass(frozen=True)
class SynthParams:
    records: int
    seed: int = 0
    classes: int = 3
    missing_rate: float = 0.0
    shared: float = 0.5  # a: weight of the linear shared factor z_0 in every modality's evidence
    nonlinear: float = 0.7  # b: weight of the modality's nonlinear function of the content factors
    noise: float = 0.5  # sigma of the per-value feature noise: low enough that the features reveal z and e well
    world_seed: int = 0

    def __post_init__(self) -> None:
        if self.records < 1:
            raise ValueError(f"records must be positive, got {self.records}")
        if self.classes not in (2, 3):
            raise ValueError(f"classes must be 2 or 3, got {self.classes}")
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ValueError(f"missing_rate must be in [0, 1], got {self.missing_rate}")
        if self.shared < 0 or self.nonlinear < 0 or self.shared**2 + self.nonlinear**2 >= 1.0:
            raise ValueError(f"shared and nonlinear must be >= 0 with shared^2 + nonlinear^2 < 1, got "
                             f"{self.shared} and {self.nonlinear}")

    @property
    def private(self) -> float:
        """c: weight of each modality's private evidence."""
        return math.sqrt(1.0 - self.shared**2 - self.nonlinear**2)


def latent_dim(n_modalities: int) -> int:
    """K: z_0 plus enough content factors for a distinct pair per modality."""
    n = 2
    while n * (n - 1) // 2 < n_modalities:
        n += 1
    return n + 1


def content_pairs(n_modalities: int) -> list[tuple[int, int]]:
    """The pair (i, j) of content factors whose product is h_m(z), per modality."""
    return list(itertools.combinations(range(1, latent_dim(n_modalities)), 2))[:n_modalities]


def nonlinear_part(z: np.ndarray, n_modalities: int) -> np.ndarray:
    """h(z): (N, K) -> (N, M), h_m = z_i * z_j."""
    return np.stack([z[:, i] * z[:, j] for i, j in content_pairs(n_modalities)], axis=1)


def label_names(classes: int) -> tuple[str, ...]:
    return ("negative", "positive") if classes == 2 else ("negative", "neutral", "positive")


def threshold(params: SynthParams, n_modalities: int) -> float:
    """tau: the class boundary on the mean evidence (3 classes); 0 for 2 classes.

    Var(mean_m e_m) = a^2 + (b^2 + c^2) / M: the products h_m of distinct pairs are uncorrelated."""
    if params.classes == 2:
        return 0.0
    var_mean = params.shared**2 + (1.0 - params.shared**2) / n_modalities
    return TAU_QUANTILE * math.sqrt(var_mean)


def classify(mean_evidence: np.ndarray, classes: int, tau: float) -> np.ndarray:
    """The label rule of step 3, on mean evidence."""
    if classes == 2:
        return (mean_evidence > 0).astype(np.int64)
    return np.where(mean_evidence < -tau, 0, np.where(mean_evidence > tau, 2, 1)).astype(np.int64)


def key_truth(evidence: np.ndarray, classes: int, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """evidence (N, M) -> (labels (N,), labels without each modality (N, M), key (N, M)).

    Without k = k neutralised: its evidence replaced by its mean, 0; the mean is still over M modalities."""
    n_mod = evidence.shape[1]
    labels = classify(evidence.mean(axis=1), classes, tau)
    without = classify((evidence.sum(axis=1, keepdims=True) - evidence) / n_mod, classes, tau)  # (N, M)
    return labels, without, without != labels[:, None]


def class_bounds(classes: int, tau: float) -> np.ndarray:
    """(C, 2): the interval of mean evidence that each class covers."""
    if classes == 2:
        return np.array([[-np.inf, 0.0], [0.0, np.inf]])
    return np.array([[-np.inf, -tau], [-tau, tau], [tau, np.inf]])


def posterior(params: SynthParams, latent: np.ndarray, evidence: np.ndarray, missing: np.ndarray,
              tau: float) -> np.ndarray:
    """P(label = c | z and the evidence of the modalities not missing): (N, C), closed form.

    latent (N, K), evidence (N, M), missing (N, M) bool. The missing modalities' evidences are independent
    given z: their sum is N(sum of a z_0 + b h_k(z), |missing| c^2). A record missing nothing gets a one-hot
    row (its label is a function of the evidence)."""
    n_mod = evidence.shape[1]
    mean_k = params.shared * latent[:, :1] + params.nonlinear * nonlinear_part(latent, n_mod)  # (N, M)
    known = np.where(missing, 0.0, evidence).sum(axis=1)
    loc = (known + np.where(missing, mean_k, 0.0).sum(axis=1)) / n_mod  # mean of s
    sd = params.private * np.sqrt(missing.sum(axis=1)) / n_mod  # (N,)
    bounds = class_bounds(params.classes, tau)
    safe = np.where(sd > 0, sd, 1.0)
    cdf = lambda x: np.where(sd > 0, ndtr((x - loc) / safe), (loc <= x).astype(np.float64))  # noqa: E731
    probs = np.stack([cdf(hi) - cdf(lo) for lo, hi in bounds], axis=1)
    return np.clip(probs, 0.0, 1.0)


def key_probability(params: SynthParams, latent: np.ndarray, evidence: np.ndarray, tau: float) -> np.ndarray:
    """p_key (N, M): P(modality k is key | z, the other evidences), for every k."""
    n, n_mod = evidence.shape
    _, without, _ = key_truth(evidence, params.classes, tau)
    out = np.empty((n, n_mod))
    for k in range(n_mod):
        missing = np.zeros((n, n_mod), dtype=bool)
        missing[:, k] = True
        probs = posterior(params, latent, evidence, missing, tau)
        out[:, k] = 1.0 - probs[np.arange(n), without[:, k]]  # without k does not depend on e_k
    return out


@dataclass(frozen=True)
class World:
    """The fixed part of the generative model (step 4): mixing, sentiment direction and gain per modality."""

    mixing: tuple[np.ndarray, ...]  # (K, dim) per modality
    direction: tuple[np.ndarray, ...]  # (dim,) per modality, norm sqrt(dim)
    gain: tuple[float, ...]

    @classmethod
    def make(cls, modalities: tuple[ModalitySpec, ...], seed: int) -> "World":
        rng = np.random.default_rng(seed)
        k = latent_dim(len(modalities))
        mixing, direction = [], []
        for m in modalities:
            mixing.append(rng.normal(0.0, 1.0 / math.sqrt(k), size=(k, m.dim)))
            u = rng.normal(size=m.dim)
            direction.append(u / np.linalg.norm(u) * math.sqrt(m.dim))
        gain = tuple(float(g) for g in np.linspace(0.6, 1.2, len(modalities)))  # text (last) most reliable
        return cls(tuple(mixing), tuple(direction), gain)


def _features(rng, world: World, j: int, spec: ModalitySpec, z, e, noise) -> tuple[np.ndarray, np.ndarray]:
    n = len(z)
    lengths = rng.integers(math.ceil(spec.max_len / 2), spec.max_len + 1, size=n)
    steps = np.arange(spec.max_len)[None, :]  # (1, L)
    centre = rng.uniform(0, 1, size=(n, 1)) * lengths[:, None]
    width = np.maximum(lengths[:, None] / 3.0, 1.0)
    bump = np.exp(-(((steps - centre) / width) ** 2)) * (steps < lengths[:, None])  # (n, L)
    bump = bump / np.maximum(bump.sum(axis=1, keepdims=True), 1e-9) * lengths[:, None]  # mean 1 over steps
    shared = (z @ world.mixing[j])[:, None, :]  # (n, 1, dim)
    evidence = world.gain[j] * e[:, None, None] * bump[:, :, None] * world.direction[j][None, None, :]
    x = shared + evidence + noise * rng.standard_normal((n, spec.max_len, spec.dim))
    x *= (steps < lengths[:, None])[:, :, None]
    return x.astype(np.float32), lengths


def truth_schema(modalities: tuple[ModalitySpec, ...], params: SynthParams) -> pa.Schema:
    """Input v1 with the truth columns, and the generator's parameters in the metadata."""
    schema = input_schema(modalities, truth=True)
    meta = {**asdict(params), "tau": threshold(params, len(modalities)), "private": params.private,
            "latent_dim": latent_dim(len(modalities)), "content_pairs": content_pairs(len(modalities)),
            "modalities": [m.name for m in modalities]}
    return schema.with_metadata({**schema.metadata, META_KEY: json.dumps(meta).encode()})


def params_from_schema(schema: pa.Schema) -> tuple[SynthParams, float] | None:
    """(params, tau) recorded by `emmr synth` in a file's schema, or None for data that are not synthetic."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        return None
    meta = json.loads(raw)
    fields = set(SynthParams.__dataclass_fields__)
    return SynthParams(**{k: v for k, v in meta.items() if k in fields}), float(meta["tau"])


def generate(params: SynthParams, modalities: tuple[ModalitySpec, ...], start: int = 0, count: int | None = None) -> pa.Table:
    """Records start .. start+count of the data set `params` describes, as an input v1 table with truth."""
    count = params.records - start if count is None else count
    n_mod = len(modalities)
    world = World.make(modalities, params.world_seed)
    tau = threshold(params, n_mod)
    # The missing draw is over the whole data set, so any chunking writes the same records.
    drop_rng = np.random.default_rng([params.seed, 1])
    n_drop = round(params.missing_rate * params.records)
    dropped_all = np.full(params.records, -1)
    dropped_all[drop_rng.permutation(params.records)[:n_drop]] = drop_rng.integers(0, n_mod, size=n_drop)
    dropped = dropped_all[start : start + count]

    rng = np.random.default_rng([params.seed, 2, start])
    z = rng.standard_normal((count, latent_dim(n_mod)))
    eps = rng.standard_normal((count, n_mod))
    evidence = params.shared * z[:, :1] + params.nonlinear * nonlinear_part(z, n_mod) + params.private * eps  # (count, M)
    labels, without, key = key_truth(evidence, params.classes, tau)
    p_key = key_probability(params, z, evidence, tau)

    ids = [f"synth-{params.seed}-{i:08d}" for i in range(start, start + count)]
    columns: dict[str, pa.Array] = {"id": pa.array(ids, pa.string())}
    for j, m in enumerate(modalities):
        x, lengths = _features(rng, world, j, m, z, evidence[:, j], params.noise)
        columns[m.name] = modality_array(x, np.where(dropped == j, 0, lengths), m)
    columns["label"] = pa.array(labels, pa.int64())
    seconds = np.arange(start, start + count, dtype=np.int64) * 1_000_000
    columns["event_time"] = pa.array(seconds + int(BASE_TIME.timestamp() * 1_000_000), TIMESTAMP)
    for j, m in enumerate(modalities):
        columns[f"evidence_{m.name}"] = pa.array(evidence[:, j].astype(np.float32))
    for j, m in enumerate(modalities):
        columns[f"key_{m.name}"] = pa.array(key[:, j])
    for j, m in enumerate(modalities):
        columns[f"label_without_{m.name}"] = pa.array(without[:, j], pa.int64())
    for j, m in enumerate(modalities):
        columns[f"p_key_{m.name}"] = pa.array(p_key[:, j].astype(np.float32))
    columns["latent"] = pa.array(list(z.astype(np.float32)), pa.list_(pa.field("element", pa.float32(), nullable=False)))
    names = [m.name for m in modalities]
    columns["dropped"] = pa.array([names[d] if d >= 0 else None for d in dropped], pa.string())
    return pa.Table.from_pydict(columns, schema=truth_schema(modalities, params))


def write(params: SynthParams, modalities: tuple[ModalitySpec, ...], out_dir: str, target_group_bytes: int = 32 << 20) -> str:
    """Write the data set as `out_dir/part-00000.parquet` in row groups of about 32 MB; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "part-00000.parquet")
    bytes_per_record = sum(4 * m.dim * m.max_len for m in modalities)
    chunk = max(1, min(params.records, target_group_bytes // bytes_per_record))
    with pq.ParquetWriter(path, truth_schema(modalities, params)) as writer:
        for start in range(0, params.records, chunk):
            writer.write_table(generate(params, modalities, start, min(chunk, params.records - start)))
    return path
