"""Compact Arrow records <-> the model's padded arrays, on the model's side of the job.

Decoding hands the model handler `ScoringBatch`es whose records are Arrow tables in one canonical layout
(`canonical_table`: the input v1 columns, frames as float32 fixed-size lists, nothing padded), so that what Beam
shuffles, batches and keeps in state is the records' real values. The handler pads them just before the model
(`Padder.pad`): every modality to the model's max_len, length 0 = missing, into buffers it keeps and reuses from
batch to batch (pinned host memory when the model runs on CUDA, so that the copy to the GPU needs no staging copy
and can overlap). Padding lives in this one function: length bucketing or device-side buffers change it here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emmr.batch import ModalityBatch
from schemas.arrow import TIMESTAMP, input_schema, modality_type
from schemas.modality import ModalitySpec


def _combined(col) -> pa.Array:
    """One array for a column; a column of one chunk is that chunk (combine_chunks would copy a slice's values)."""
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def list_lengths(col: pa.Array) -> np.ndarray:
    """(n,) int64 lengths of a list column, 0 where null."""
    return pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def canonical_modality(col, spec: ModalitySpec) -> pa.Array:
    """A validated modality column (list of list or fixed-size list of float32/float64 frames of `dim` values) ->
    list<fixed_size_list<float32>[dim]>, null where missing. Zero-copy when it already is."""
    col = _combined(col)
    typ = modality_type(spec.dim)
    if col.type == typ:
        return col
    lengths = list_lengths(col)
    frames = col.flatten()  # the frames of the non-null rows, in order (respects slicing)
    values = frames.flatten().cast(pa.float32())  # validation checked: no null frame, `dim` finite values each
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    fixed = pa.FixedSizeListArray.from_arrays(values, type=typ.value_type)
    return pa.ListArray.from_arrays(offsets, fixed, type=typ, mask=col.is_null())


def canonical_table(t: pa.Table, modalities: tuple[ModalitySpec, ...]) -> pa.Table:
    """Validated input records -> the canonical layout (input_schema(modalities)): only the job's columns, frames as
    float32, label int64, event_time as UTC microseconds (absent columns as nulls)."""
    schema = input_schema(modalities)
    n = t.num_rows
    columns = [_combined(t.column("id")).cast(pa.string())]
    columns += [canonical_modality(t.column(m.name), m) if m.name in t.schema.names else pa.nulls(n, modality_type(m.dim))
                for m in modalities]
    columns.append(_combined(t.column("label")).cast(pa.int64()) if "label" in t.schema.names else pa.nulls(n, pa.int64()))
    if "event_time" in t.schema.names:
        et = _combined(t.column("event_time"))
        columns.append(et.cast(pa.timestamp("us", tz=et.type.tz), safe=False).cast(TIMESTAMP))
    else:
        columns.append(pa.nulls(n, TIMESTAMP))
    return pa.Table.from_arrays(columns, schema=schema)


def present(t: pa.Table, names) -> np.ndarray:
    """(B, M) bool: which of the modalities `names` each record of a canonical table has."""
    return np.stack([list_lengths(_combined(t.column(n))) > 0 for n in names], axis=1)


class Padder:
    """Pads canonical tables into buffers it keeps: (capacity, max_len, dim) float32 per modality, grown when a
    batch needs more rows, reused otherwise. `pinned`: the buffers are page-locked host memory (torch), for a model
    on CUDA. A returned ModalityBatch views the buffers: valid until the next `pad`."""

    def __init__(self, modalities: tuple[ModalitySpec, ...], pinned: bool = False):
        self.modalities, self.pinned = modalities, pinned
        self._features: dict[str, np.ndarray] = {}
        self.capacity = 0

    def _allocate(self, rows: int) -> None:
        capacity = max(rows, 2 * self.capacity)
        for m in self.modalities:
            shape = (capacity, m.max_len, m.dim)
            if self.pinned:
                import torch

                self._features[m.name] = torch.zeros(shape, dtype=torch.float32).pin_memory().numpy()
            else:
                self._features[m.name] = np.zeros(shape, dtype=np.float32)
        self.capacity = capacity

    def pad(self, tables: list[pa.Table]) -> ModalityBatch:
        """Canonical tables -> one ModalityBatch (ids, features padded to max_len, lengths, labels)."""
        t = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        n = t.num_rows
        if n > self.capacity:
            self._allocate(n)
        features, lengths = {}, {}
        for m in self.modalities:
            col = _combined(t.column(m.name))
            out = self._features[m.name][:n]
            out.fill(0.0)
            steps = list_lengths(col)
            if (steps > m.max_len).any():
                raise ValueError(f"modality {m.name!r}: a sequence of {steps.max()} steps, maximum {m.max_len} "
                                 "(validation lets none through)")
            if steps.sum():
                values = col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, m.dim)  # (frames, dim)
                starts = np.cumsum(steps) - steps  # each row's first frame in `values`
                # frame f of row r goes to row r * max_len + (f - starts[r]) of out seen as (n * max_len, dim)
                at = np.arange(len(values)) + np.repeat(np.arange(n) * m.max_len - starts, steps)
                out.reshape(-1, m.dim)[at] = values
            features[m.name], lengths[m.name] = out, steps
        ids = t.column("id").to_numpy(zero_copy_only=False)  # (n,) object
        labels = t.column("label").fill_null(-1).to_numpy().astype(np.int64, copy=False)
        return ModalityBatch(ids=ids, features=features, lengths=lengths, labels=labels)
