"""Decoding and validation, as plain functions (no runner): Arrow in, ScoringBatches and dead letters out.

Batch mode validates a whole Parquet row group at once (vectorised, schemas.validate), keeps the valid rows,
and pads them to numpy in slices of at most --batch_size records (emmr.batch.from_arrow). Streaming decodes
one message v1 into a one-row batch and validates it the same way. Every invalid record becomes exactly one
dead letter naming its id, field and reason; valid ids that repeat across row groups or messages are kept
(validation sees one batch; downstream can remove duplicates by id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from beam_pipeline import dead_letters
from beam_pipeline.dead_letters import DeadLetter
from beam_pipeline.elements import NO_TIME, ParquetChunk, ScoringBatch
from emmr.batch import from_arrow
from schemas.message import ATTR_ID, MessageError, decode_message
from schemas.modality import ModalitySpec
from schemas.validate import validate_input

BAD_ATTRIBUTES = "bad_attributes"


@dataclass(frozen=True)
class Decoder:
    """What decoding needs from the model's configuration."""

    modalities: tuple[ModalitySpec, ...]
    num_classes: int
    batch_size: int = 256


def event_times(t: pa.Table) -> np.ndarray:
    """(n,) int64 microseconds of `event_time`, NO_TIME where null or absent (validation checked the type)."""
    if "event_time" not in t.schema.names:
        return np.full(t.num_rows, NO_TIME, dtype=np.int64)
    col = t.column("event_time")
    col = col.cast(pa.timestamp("us", tz=col.type.tz), safe=False).cast(pa.int64())
    return col.fill_null(NO_TIME).to_numpy().astype(np.int64, copy=False)


def _row_dead_letter(t: pa.Table, row: int, record_id: str | None, source: str, kind: str, message: str,
                     at: int) -> DeadLetter:
    try:
        payload = dead_letters.ipc_bytes(t.slice(row, 1))
    except (pa.ArrowException, ValueError):
        payload = None
    return DeadLetter(id=record_id, source=source, error_kind=kind, error=message, payload=payload, failed_at_us=at)


def decode_chunk(chunk: ParquetChunk, d: Decoder) -> tuple[list[ScoringBatch], list[DeadLetter]]:
    """A Parquet row group -> (ScoringBatches of its valid rows, one dead letter per invalid row)."""
    at = dead_letters.now_us()
    if chunk.table is None:
        return [], [DeadLetter(None, chunk.path, dead_letters.UNREADABLE_FILE,
                               f"file {chunk.path}: cannot be read as Parquet: {chunk.error}", None, at)]
    t = chunk.table
    result = validate_input(t, d.modalities, d.num_classes)
    letters = [
        _row_dead_letter(t, e.row, e.record_id, f"{chunk.path}#row={chunk.first_row + e.row}", e.kind, str(e), at)
        for e in result.errors
    ]
    valid_rows = np.flatnonzero(result.valid)
    if not len(valid_rows):
        return [], letters
    good = t if len(valid_rows) == t.num_rows else t.take(pa.array(valid_rows))
    times = event_times(good)
    batches = []
    for start in range(0, good.num_rows, d.batch_size):
        piece = good.slice(start, d.batch_size)  # zero-copy
        stop = start + piece.num_rows
        batches.append(ScoringBatch(records=from_arrow(piece, d.modalities), event_time_us=times[start:stop],
                                    publish_time_us=None, source=chunk.path,
                                    rows=chunk.first_row + valid_rows[start:stop]))
    return batches, letters


def decode_message_record(data: bytes | None, attributes: dict[str, str] | None, message_id: str | None,
                          publish_time_us: int, d: Decoder) -> ScoringBatch | DeadLetter:
    """One Pub/Sub message v1 -> a one-record ScoringBatch, or its dead letter."""
    attributes = dict(attributes or {})
    source = f"pubsub:{message_id}"
    claimed_id = attributes.get(ATTR_ID)
    at = dead_letters.now_us()
    try:
        record = decode_message(data or b"", attributes)
    except MessageError as e:
        return DeadLetter(claimed_id, source, e.kind, str(e), data, at)
    t = pa.Table.from_batches([record])
    result = validate_input(t, d.modalities, d.num_classes)
    if result.errors:
        e = result.errors[0]
        return DeadLetter(e.record_id or claimed_id, source, e.kind, str(e), data, at)
    record_id = t.column("id")[0].as_py()
    if claimed_id is not None and claimed_id != record_id:
        return DeadLetter(record_id, source, BAD_ATTRIBUTES,
                          f"record {record_id!r}: attribute {ATTR_ID!r} says {claimed_id!r}", data, at)
    return ScoringBatch(records=from_arrow(t, d.modalities), event_time_us=event_times(t),
                        publish_time_us=np.array([publish_time_us], dtype=np.int64), source=source, rows=None)

