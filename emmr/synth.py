"""Synthetic input v1 records that plant the paper's inconsistency phenomenon, with exact ground truth.

Generative model (one record; `m` ranges over the modalities, `M` of them):

1. Shared latent factors z ~ N(0, I_K). z_0 is a shared sentiment factor.
2. Each modality's own sentiment evidence e_m = rho * z_0 + sqrt(1 - rho^2) * eps_m, eps_m ~ N(0, 1):
   correlated through z_0 (so a missing modality is partly predictable from the others) but private in part
   (so it can disagree with them).
3. The label is the class of the mean evidence of all modalities, s = mean_m e_m: binary `s > 0`, or with
   three classes negative / neutral / positive split at -tau and +tau (tau makes the classes about equal).
   The label the modalities other than k imply is the class, by the same rule, of the mean of their
   evidence. Modality k is *key* for the record when the two differ: dropping k flips the label. This is
   exact, because the generator knows e; it is written as `key_<m>` beside `evidence_<m>` and `dropped`.
   Where two modalities disagree or are near a class boundary, the third decides: those are the key cases.
4. Features: a sequence of L_m steps (L_m uniform in [ceil(max_len / 2), max_len], the rest is padding),
   step t of modality m being
       x_{m,t} = A_m^T z + g_m * e_m * w_t * u_m + noise,   noise ~ N(0, sigma^2 I)
   with A_m (K x dim) a mixing of the shared factors (the shared structure that reconstruction can use),
   u_m a sentiment direction (norm sqrt(dim)), g_m the modality's reliability, and w_t a bump at a random
   step, normalised to mean 1 over the record's steps (evidence spread over time, so attention must look).
   A_m, u_m and g_m form the *world*: fixed by `world_seed`, shared by every split, so a model trained on
   one seed's records scores another seed's records.
5. Missingness: round(missing_rate * N) records, chosen at random, drop one modality (uniform): its column
   is null and `dropped` names it. Their key truth still describes every modality.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emmr.batch import modality_array
from schemas.arrow import TIMESTAMP, input_schema
from schemas.modality import ModalitySpec

LATENT_DIM = 4
TAU_QUANTILE = 0.4307  # Phi^-1(2/3): +-tau at this many standard deviations split N(0, s^2) into thirds
BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SynthParams:
    records: int
    seed: int = 0
    classes: int = 3
    missing_rate: float = 0.0
    rho: float = 0.6  # correlation of each modality's evidence with the shared sentiment factor
    noise: float = 1.0  # sigma of the per-value noise
    world_seed: int = 0

    def __post_init__(self) -> None:
        if self.records < 1:
            raise ValueError(f"records must be positive, got {self.records}")
        if self.classes not in (2, 3):
            raise ValueError(f"classes must be 2 or 3, got {self.classes}")
        if not 0.0 <= self.missing_rate <= 1.0:
            raise ValueError(f"missing_rate must be in [0, 1], got {self.missing_rate}")
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {self.rho}")


def label_names(classes: int) -> tuple[str, ...]:
    return ("negative", "positive") if classes == 2 else ("negative", "neutral", "positive")


def threshold(params: SynthParams, n_modalities: int) -> float:
    """tau: the class boundary on mean evidence of all modalities (3 classes); 0 for 2 classes."""
    if params.classes == 2:
        return 0.0
    var_mean = params.rho**2 + (1 - params.rho**2) / n_modalities
    return TAU_QUANTILE * math.sqrt(var_mean)


def classify(mean_evidence: np.ndarray, classes: int, tau: float) -> np.ndarray:
    """The label rule of step 3, on mean evidence."""
    if classes == 2:
        return (mean_evidence > 0).astype(np.int64)
    return np.where(mean_evidence < -tau, 0, np.where(mean_evidence > tau, 2, 1)).astype(np.int64)


def key_truth(evidence: np.ndarray, classes: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), key (N, M)): the label of all modalities, and whether dropping each flips it."""
    n_mod = evidence.shape[1]
    labels = classify(evidence.mean(axis=1), classes, tau)
    without = (evidence.sum(axis=1, keepdims=True) - evidence) / (n_mod - 1)  # (N, M) mean of the others
    return labels, classify(without, classes, tau) != labels[:, None]


@dataclass(frozen=True)
class World:
    """The fixed part of the generative model (step 4): mixing, sentiment direction and gain per modality."""

    mixing: tuple[np.ndarray, ...]  # (K, dim) per modality
    direction: tuple[np.ndarray, ...]  # (dim,) per modality, norm sqrt(dim)
    gain: tuple[float, ...]

    @classmethod
    def make(cls, modalities: tuple[ModalitySpec, ...], seed: int) -> "World":
        rng = np.random.default_rng(seed)
        mixing, direction = [], []
        for m in modalities:
            mixing.append(rng.normal(0.0, 1.0 / math.sqrt(LATENT_DIM), size=(LATENT_DIM, m.dim)))
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
    z = rng.standard_normal((count, LATENT_DIM))
    eps = rng.standard_normal((count, n_mod))
    evidence = params.rho * z[:, :1] + math.sqrt(1 - params.rho**2) * eps  # (count, M)
    labels, key = key_truth(evidence, params.classes, tau)

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
    names = [m.name for m in modalities]
    columns["dropped"] = pa.array([names[d] if d >= 0 else None for d in dropped], pa.string())
    schema = input_schema(modalities, truth=True)
    return pa.Table.from_pydict(columns, schema=schema)


def write(params: SynthParams, modalities: tuple[ModalitySpec, ...], out_dir: str, target_group_bytes: int = 32 << 20) -> str:
    """Write the data set as `out_dir/part-00000.parquet` in row groups of about 32 MB; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "part-00000.parquet")
    bytes_per_record = sum(4 * m.dim * m.max_len for m in modalities)
    chunk = max(1, min(params.records, target_group_bytes // bytes_per_record))
    with pq.ParquetWriter(path, input_schema(modalities, truth=True)) as writer:
        for start in range(0, params.records, chunk):
            writer.write_table(generate(params, modalities, start, min(chunk, params.records - start)))
    return path
