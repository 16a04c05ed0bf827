"""Arrow input records -> padded numpy arrays with lengths, vectorised (no Python object per value).

A `ModalityBatch` is what the model consumes, on both sides: training reads Parquet folders into one, and
the scoring job turns each Arrow record batch into one. A modality of length 0 is missing.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import modality_type
from schemas.modality import ModalitySpec
from schemas.validate import frame_rows, list_lengths, validate_input


@dataclass
class ModalityBatch:
    ids: np.ndarray  # (B,) object (str)
    features: dict[str, np.ndarray]  # name -> (B, L_m, d_m) float32, zero beyond each record's length
    lengths: dict[str, np.ndarray]  # name -> (B,) int64; 0 = missing
    labels: np.ndarray  # (B,) int64; -1 = unknown

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def present(self) -> np.ndarray:
        """(B, M) bool: which modalities each record has."""
        return np.stack([self.lengths[n] > 0 for n in self.names], axis=1)

    def take(self, index: np.ndarray) -> "ModalityBatch":
        return ModalityBatch(
            ids=self.ids[index],
            features={n: f[index] for n, f in self.features.items()},
            lengths={n: l[index] for n, l in self.lengths.items()},
            labels=self.labels[index],
        )

    def drop(self, missing: np.ndarray) -> "ModalityBatch":
        """A copy with modality j of row i removed where missing[i, j] (features zeroed, length 0)."""
        features, lengths = {}, {}
        for j, n in enumerate(self.names):
            keep = ~missing[:, j]
            features[n] = self.features[n] * keep[:, None, None].astype(np.float32)
            lengths[n] = np.where(keep, self.lengths[n], 0)
        return ModalityBatch(ids=self.ids, features=features, lengths=lengths, labels=self.labels)


@dataclass(frozen=True)
class Bucket:
    """Rows of a batch scored together, and the steps each modality keeps for them."""

    rows: np.ndarray  # (b,) int64 indices into the batch
    lens: tuple[int, ...]  # steps per modality: the longest among the rows, max_len where a row misses it


def length_buckets(lengths: np.ndarray, max_lens: tuple[int, ...], rows: int) -> list[Bucket]:
    """Cut a batch into buckets of at most `rows` rows whose lengths are alike, so that the model computes about the
    steps the records have rather than every modality's max_len (emmr/nn/layout.py: trimmed layouts).

    lengths (B, M), 0 = missing. Rows are grouped by the modalities they miss (a missing modality keeps all of its
    max_len steps: recovery fills them), then sorted by their longest modality's length, then by the total, and cut
    in order. Every row is in exactly one bucket."""
    lengths = np.asarray(lengths, dtype=np.int64)
    top = np.asarray(max_lens, dtype=np.int64)
    missing = lengths == 0  # (B, M)
    slots = np.where(missing, top, lengths)  # (B, M): the slots each row needs
    pattern = missing.astype(np.int64) @ (1 << np.arange(lengths.shape[1], dtype=np.int64))  # (B,)
    longest = int(np.argmax(top))
    order = np.lexsort((slots.sum(axis=1), slots[:, longest], pattern))
    out = []
    for p in np.unique(pattern):
        group = order[pattern[order] == p]
        for start in range(0, len(group), rows):
            idx = np.sort(group[start : start + rows])  # ascending rows: gathers read memory in order
            lens = np.where(missing[idx].any(axis=0), top, lengths[idx].max(axis=0))
            out.append(Bucket(idx, tuple(int(n) for n in lens)))
    return out


def concat_batches(batches: list[ModalityBatch]) -> ModalityBatch:
    """Several ModalityBatches of the same modalities (and max lengths) as one."""
    if len(batches) == 1:
        return batches[0]
    names = batches[0].names
    return ModalityBatch(
        ids=np.concatenate([b.ids for b in batches]),
        features={n: np.concatenate([b.features[n] for b in batches]) for n in names},
        lengths={n: np.concatenate([b.lengths[n] for b in batches]) for n in names},
        labels=np.concatenate([b.labels for b in batches]),
    )


def pad_modality(col: pa.Array, spec: ModalitySpec, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A list<list-of-floats> column -> ((n, max_len, dim) float32, (n,) lengths). Rows must be valid.

    Longer sequences raise unless `truncate`, which keeps the first max_len steps.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    lengths = list_lengths(col)
    if (lengths > spec.max_len).any() and not truncate:
        raise ValueError(f"modality {spec.name!r}: sequences up to {lengths.max()} steps, maximum {spec.max_len}")
    out = np.zeros((n, spec.max_len, spec.dim), dtype=np.float32)
    if lengths.sum() == 0:
        return out, lengths
    values = col.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    values = values.reshape(-1, spec.dim)  # (frames, dim)
    rows = frame_rows(lengths)
    steps = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = steps < spec.max_len
    out[rows[keep], steps[keep]] = values[keep]
    return out, np.minimum(lengths, spec.max_len)


def from_arrow(batch: pa.RecordBatch | pa.Table, modalities: tuple[ModalitySpec, ...], truncate: bool = False) -> ModalityBatch:
    """Valid input records -> ModalityBatch (validate first; invalid rows raise here)."""
    features, lengths = {}, {}
    for m in modalities:
        features[m.name], lengths[m.name] = pad_modality(batch.column(m.name), m, truncate)
    ids = np.asarray(batch.column("id").to_pylist(), dtype=object)
    if "label" in batch.schema.names:
        labels = batch.column("label").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        labels = np.full(batch.num_rows, -1, dtype=np.int64)
    return ModalityBatch(ids=ids, features=features, lengths=lengths, labels=labels)


def parquet_files(path: str) -> list[str]:
    """The Parquet files of a folder (recursively), or of a glob, or a single file; sorted."""
    if os.path.isdir(path):
        files = glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
    else:
        files = glob.glob(path)
    if not files:
        raise FileNotFoundError(f"no Parquet files at {path!r}")
    return sorted(files)


def read_table(path: str) -> pa.Table:
    """All Parquet files of `path` as one table."""
    return pa.concat_tables([pq.read_table(f) for f in parquet_files(path)], promote_options="default")


def load_records(path: str, modalities: tuple[ModalitySpec, ...], num_classes: int | None = None) -> tuple[ModalityBatch, pa.Table]:
    """Read, validate (raising on the first bad record, naming it) and pad a folder of input v1 Parquet."""
    table = read_table(path)
    validate_input(table, modalities, num_classes).raise_if_invalid()
    return from_arrow(table, modalities), table


def modality_array(features: np.ndarray, lengths: np.ndarray, spec: ModalitySpec) -> pa.Array:
    """The inverse of `pad_modality`: (n, L, dim) + lengths -> list<fixed_size_list<float32>[dim]>, null where 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    valid = np.arange(features.shape[1])[None, :] < lengths[:, None]  # (n, L)
    flat = np.ascontiguousarray(features[valid], dtype=np.float32).reshape(-1)  # (frames * dim,)
    typ = modality_type(spec.dim)
    frames = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), type=typ.value_type)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, frames, type=typ, mask=pa.array(lengths == 0))
