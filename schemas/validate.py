"""Validation of input record v1, vectorised over an Arrow batch; every error names the record and field.

`validate_input` returns which rows are valid and, for each invalid row, its first error. Nothing is
dropped silently: a caller routes the invalid rows (with their errors) to the dead-letter output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow import INPUT, SCHEMA_VERSION, schema_name_version
from schemas.modality import ModalitySpec

# Error kinds, in the order the checks run (a row reports the first that applies).
SCHEMA_VERSION_KIND = "unknown_schema_version"
MISSING_COLUMN = "missing_column"
WRONG_TYPE = "wrong_type"
MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
WRONG_DIMENSION = "wrong_dimension"
NULL_FRAME = "null_frame"
NON_FINITE = "non_finite"
TOO_LONG = "too_long"
NO_MODALITY = "no_modality"
LABEL_OUT_OF_RANGE = "label_out_of_range"


@dataclass(frozen=True)
class RecordError:
    """Why one record is invalid: its row in the batch, its id (if it could be read), the field and the reason."""

    row: int
    record_id: str | None
    field: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"record {self.record_id!r} (row {self.row}), field {self.field!r}: {self.kind}: {self.message}"


class RecordValidationError(ValueError):
    """Raised by `ValidationResult.raise_if_invalid`; the message names the first bad record and field."""

    def __init__(self, errors: list[RecordError]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more invalid records)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


@dataclass
class ValidationResult:
    valid: np.ndarray  # bool (n,)
    errors: list[RecordError]  # the first error of each invalid row, in row order

    def raise_if_invalid(self) -> None:
        if self.errors:
            raise RecordValidationError(self.errors)


class _Errors:
    """Collects the first error per row, vectorised: an error code per row (-1 = none), the reasons by code."""

    def __init__(self, n: int, ids: pa.Array | None):
        self.n, self._ids = n, ids
        self.code = np.full(n, -1, dtype=np.int32)
        self.reasons: list[tuple[str, str, str]] = []  # code -> (field, kind, message)

    def add(self, rows: np.ndarray, field: str, kind: str, message: str) -> None:
        rows = np.asarray(rows)
        new = np.zeros(self.n, dtype=bool)
        new[rows] = True  # a boolean mask or row indices
        new &= self.code < 0
        if new.any():
            self.code[new] = len(self.reasons)
            self.reasons.append((field, kind, message))

    def add_all(self, field: str, kind: str, message: str) -> None:
        self.add(np.ones(self.n, dtype=bool), field, kind, message)

    def record_id(self, row: int) -> str | None:
        return None if self._ids is None else self._ids[row].as_py()

    def result(self) -> ValidationResult:
        valid = self.code < 0
        errors = []
        for r in np.flatnonzero(~valid):
            field, kind, message = self.reasons[self.code[r]]
            errors.append(RecordError(int(r), self.record_id(int(r)), field, kind, message))
        return ValidationResult(valid=valid, errors=errors)


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array | None:
    if name not in batch.schema.names:
        return None
    col = batch.column(name)
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # one chunk: no copy


def _ids(batch) -> pa.Array | None:
    """The id column when it holds strings (what errors name records by), else None."""
    col = _column(batch, "id")
    if col is None or not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    return col


def _empty_and_repeated(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(n,) bool each: ids null or empty; non-empty ids equal to an earlier row's. Vectorised (hashing in Arrow)."""
    n = len(ids)
    empty = pc.fill_null(pc.equal(pc.binary_length(ids), 0), True).to_numpy(zero_copy_only=False)
    codes = pc.fill_null(ids.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False)
    repeated = np.ones(n, dtype=bool)
    repeated[np.unique(codes, return_index=True)[1]] = False  # the first row of each distinct id
    return empty, repeated & ~empty


def frame_rows(lengths: np.ndarray) -> np.ndarray:
    """The row index of each frame of a flattened list column, given per-row lengths (nulls as 0)."""
    return np.repeat(np.arange(len(lengths)), lengths)


def list_lengths(col: pa.Array) -> np.ndarray:
    """Per-row sequence lengths of a list column, nulls counted as 0 (the record misses that modality)."""
    return col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_modality(col: pa.Array | None, m: ModalitySpec, errors: _Errors, lengths_out: dict) -> None:
    n = errors.n
    lengths_out[m.name] = np.zeros(n, dtype=np.int64)
    expected = f"list<fixed_size_list<float32>[{m.dim}]>"
    if col is None:
        errors.add_all(m.name, MISSING_COLUMN, f"column absent, expected {expected}")
        return
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        errors.add_all(m.name, WRONG_TYPE, f"expected {expected}, got {col.type}")
        return
    inner_type = col.type.value_type
    fixed = pa.types.is_fixed_size_list(inner_type)
    if not (fixed or pa.types.is_list(inner_type) or pa.types.is_large_list(inner_type)) or not pa.types.is_floating(
        inner_type.value_type
    ):
        errors.add_all(m.name, WRONG_TYPE, f"expected {expected}, got {col.type}")
        return
    lengths = list_lengths(col)
    lengths_out[m.name] = lengths
    frames = col.flatten()
    rows_of_frame = frame_rows(lengths)
    if frames.null_count:
        bad = np.zeros(n, dtype=bool)
        bad[rows_of_frame[frames.is_null().to_numpy(zero_copy_only=False)]] = True
        errors.add(bad, m.name, NULL_FRAME, "a frame is null")
    if fixed:
        if inner_type.list_size != m.dim:
            errors.add(lengths > 0, m.name, WRONG_DIMENSION, f"frames have {inner_type.list_size} values, expected {m.dim}")
            return
        # every frame, null or not, has m.dim slots in the child array (flatten() would skip the null ones)
        values = frames.values.slice(frames.offset * m.dim, len(frames) * m.dim).to_numpy(zero_copy_only=False)
        if np.isfinite(values).all():  # the usual case: one pass, no per-frame array
            per_frame_finite = np.ones(len(frames), dtype=bool)
        else:
            per_frame_finite = np.isfinite(values.reshape(-1, m.dim)).all(axis=1)
            per_frame_finite |= frames.is_null().to_numpy(zero_copy_only=False)  # reported as null_frame
    else:
        frame_len = frames.value_lengths().fill_null(m.dim).to_numpy(zero_copy_only=False)
        wrong = np.zeros(n, dtype=bool)
        wrong[rows_of_frame[frame_len != m.dim]] = True
        if wrong.any():
            got = sorted({int(x) for x in frame_len[frame_len != m.dim]})
            errors.add(wrong, m.name, WRONG_DIMENSION, f"frames have {got} values, expected {m.dim}")
        values = frames.flatten().to_numpy(zero_copy_only=False)  # null frames contribute no values
        finite_value = np.isfinite(values.astype(np.float64, copy=False))
        actual = frames.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        value_frame = np.repeat(np.arange(len(frame_len)), actual)
        per_frame_finite = np.bincount(value_frame[~finite_value], minlength=len(frame_len)) == 0
    if not per_frame_finite.all():
        bad = np.zeros(n, dtype=bool)
        bad[rows_of_frame[~per_frame_finite]] = True
        errors.add(bad, m.name, NON_FINITE, "NaN or infinite value")
    errors.add(lengths > m.max_len, m.name, TOO_LONG, f"sequence longer than the maximum {m.max_len} steps")


def validate_input(
    batch: pa.RecordBatch | pa.Table,
    modalities: tuple[ModalitySpec, ...],
    num_classes: int | None = None,
    duplicates: bool = True,
) -> ValidationResult:
    """Check a batch of input records against input record v1 for the given modalities.

    Extra columns are ignored (the synthetic ground truth travels in them). Missing modalities (null or
    empty) are allowed as long as one modality is present. `duplicates=False` leaves repeated ids alone (records
    that arrived separately, e.g. Pub/Sub messages validated together, are not one batch).
    """
    n = batch.num_rows
    id_col = _column(batch, "id")
    errors = _Errors(n, _ids(batch))

    name, version = schema_name_version(batch.schema)
    if version is not None and (version != SCHEMA_VERSION or name not in (None, INPUT)):
        errors.add_all("schema", SCHEMA_VERSION_KIND, f"schema {name} v{version}, expected {INPUT} v{SCHEMA_VERSION}")

    if id_col is None:
        errors.add_all("id", MISSING_COLUMN, "column absent, expected string")
    elif not (pa.types.is_string(id_col.type) or pa.types.is_large_string(id_col.type)):
        errors.add_all("id", WRONG_TYPE, f"expected string, got {id_col.type}")
    else:
        empty, dup = _empty_and_repeated(id_col)
        errors.add(empty, "id", MISSING_ID, "id is null or empty")
        if duplicates:
            errors.add(dup, "id", DUPLICATE_ID, "id repeats an earlier record of the same batch")

    lengths: dict[str, np.ndarray] = {}
    for m in modalities:
        _check_modality(_column(batch, m.name), m, errors, lengths)
    present = np.stack([lengths[m.name] > 0 for m in modalities], axis=1) if n else np.zeros((0, 1), bool)
    errors.add(~present.any(axis=1), ",".join(m.name for m in modalities), NO_MODALITY, "every modality is missing")

    label = _column(batch, "label")
    if label is not None:
        if not pa.types.is_integer(label.type):
            errors.add_all("label", WRONG_TYPE, f"expected an integer class index, got {label.type}")
        else:
            values = label.fill_null(0).to_numpy(zero_copy_only=False)
            hi = num_classes if num_classes is not None else np.iinfo(np.int64).max
            errors.add((values < 0) | (values >= hi), "label", LABEL_OUT_OF_RANGE, f"expected 0 <= label < {hi}")
    event_time = _column(batch, "event_time")
    if event_time is not None and not pa.types.is_timestamp(event_time.type):
        errors.add_all("event_time", WRONG_TYPE, f"expected timestamp, got {event_time.type}")
    return errors.result()


def validate_output(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> ValidationResult:
    """Check rows of a prediction or dead-letter table against its schema (columns, types, required values)."""
    n = table.num_rows
    errors = _Errors(n, _ids(table))
    name, version = schema_name_version(table.schema)
    want_name, want_version = schema_name_version(schema)
    if version is not None and (name, version) != (want_name, want_version):
        errors.add_all("schema", SCHEMA_VERSION_KIND, f"schema {name} v{version}, expected {want_name} v{want_version}")
    for f in schema:
        col = _column(table, f.name)
        if col is None:
            errors.add_all(f.name, MISSING_COLUMN, f"column absent, expected {f.type}")
        elif not col.type.equals(f.type):
            errors.add_all(f.name, WRONG_TYPE, f"expected {f.type}, got {col.type}")
        elif not f.nullable and col.null_count:
            errors.add(col.is_null().to_numpy(zero_copy_only=False), f.name, MISSING_COLUMN, "required value is null")
    return errors.result()
