"""Dead letter v1: every record that cannot be scored, with why, where it came from and its bytes.

Kinds: the validation kinds of schemas/validate.py, the message kinds of schemas/message.py, and the job's own:
`unreadable_file` (a Parquet file that cannot be opened counts as one record), `unreadable_row_group` (a row
group whose pages cannot be read: one dead letter, one record, for its unread rows), `oversized_row_group` (rows
larger on average than any valid record: not read; one record), `invalid_utf8` (a string id that is not UTF-8),
`event_time_out_of_range` (outside years 1 to 9999), `decode_error` (decoding raised where no check foresaw it;
the input's records fail, never the job), `inference_error` (the model raised on the record: after bisecting its
batch, only the records that still fail get here; or RunInference's exception output, where the whole batch does)
and `non_finite_output` (the model returned NaN or infinite probabilities, e.g. for finite inputs so large that the
projection overflows).

The payload is the raw bytes, truncated to MAX_PAYLOAD_BYTES: a Pub/Sub message's data as received; for a
Parquet row, the row as a one-row Arrow IPC stream (message v1's encoding, so it can be republished once fixed).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from beam_pipeline import PIPELINE_VERSION
from beam_pipeline.elements import ScoringBatch
from schemas.arrow import MAX_PAYLOAD_BYTES, SCHEMA_VERSION, dead_letter_schema

UNREADABLE_FILE = "unreadable_file"  # not Parquet (no footer): one dead letter for the file
UNREADABLE_ROW_GROUP = "unreadable_row_group"  # footer fine, a row group's pages are not: one for the row group
OVERSIZED_ROW_GROUP = "oversized_row_group"  # rows larger on average than any valid record: not read, one dead letter
INVALID_UTF8 = "invalid_utf8"  # a string id whose bytes are not UTF-8 (Parquet does not check them on read)
EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"  # outside years 1..9999: no timestamp can represent it
DECODE_ERROR = "decode_error"  # decoding raised where no check foresaw it: the input's records, not the job, fail
INFERENCE_ERROR = "inference_error"
NON_FINITE_OUTPUT = "non_finite_output"
JOB_KINDS = (UNREADABLE_FILE, UNREADABLE_ROW_GROUP, OVERSIZED_ROW_GROUP, INVALID_UTF8, EVENT_TIME_OUT_OF_RANGE,
             DECODE_ERROR, INFERENCE_ERROR, NON_FINITE_OUTPUT)
SCHEMA = dead_letter_schema()


@dataclass(frozen=True)
class DeadLetter:
    id: str | None
    source: str
    error_kind: str
    error: str
    payload: bytes | None
    failed_at_us: int


def now_us() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1e6)


def bounded(data: bytes | None) -> bytes | None:
    return None if data is None else bytes(data[:MAX_PAYLOAD_BYTES])


def ipc_bytes(table: pa.Table | pa.RecordBatch) -> bytes:
    """A (one-row) table as an Arrow IPC stream: the encoding of message v1."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def table(letters: list[DeadLetter]) -> pa.Table:
    """Dead letters -> a dead letter v1 table (one row each, in order)."""
    columns = [
        pa.array([d.id for d in letters], pa.string()),
        pa.array([d.source for d in letters], pa.string()),
        pa.array([d.error_kind for d in letters], pa.string()),
        pa.array([d.error for d in letters], pa.string()),
        pa.array([bounded(d.payload) for d in letters], pa.binary()),
        pa.array([d.failed_at_us for d in letters], pa.int64()).cast(SCHEMA.field("failed_at").type),
        pa.array([PIPELINE_VERSION] * len(letters), pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def for_records(batch: ScoringBatch, rows: list[int] | np.ndarray, kind: str, messages: list[str] | str,
                failed_at_us: int | None = None) -> list[DeadLetter]:
    """Dead letters for records of a decoded batch (inference failures); the payload is the record as decoded (a
    one-row input v1 Arrow IPC stream, message v1's encoding)."""
    at = failed_at_us if failed_at_us is not None else now_us()
    rows = [int(i) for i in rows]
    if isinstance(messages, str):
        messages = [messages] * len(rows)
    ids = batch.table.column("id")
    return [
        DeadLetter(id=str(ids[i]), source=batch.source_of(i), error_kind=kind,
                   error=f"record {str(ids[i])!r}: {msg}", payload=ipc_bytes(batch.table.slice(i, 1)),
                   failed_at_us=at)
        for i, msg in zip(rows, messages)
    ]


def to_messages(t: pa.Table) -> list[tuple[bytes, dict[str, str]]]:
    """Dead letter v1 rows -> Pub/Sub messages: one JSON object each (payload in base64), with attributes."""
    out = []
    for row in t.to_pylist():
        payload = row["payload"]
        body = {**row, "payload": None if payload is None else base64.b64encode(payload).decode(),
                "failed_at": row["failed_at"].isoformat()}
        attributes = {"schema": "dead_letter", "schema_version": SCHEMA_VERSION, "error_kind": row["error_kind"],
                      "content_type": "application/json"}
        if row["id"]:
            attributes["record_id"] = row["id"]
        out.append((json.dumps(body, sort_keys=True).encode(), attributes))
    return out
