"""What flows between the job's stages: Arrow tables and numpy arrays, never a Python object per record.

- `ParquetChunk`: one Parquet row group (or a slice of a large one) as read (file, first row, Arrow table), or a
  file or row group that could not be read.
- `Message`: one Pub/Sub message as the streaming job batches it before decoding (bytes, attributes, id,
  publication time): compact, so that batching state holds what arrived and nothing more.
- `ScoringBatch`: valid records ready for the model, still compact: an Arrow table of input v1 columns in the
  canonical layout (`schemas.arrow.input_schema`: float32 frames, nothing padded) plus what the outputs need
  (event time, publication time, where each record came from). The model handler pads them (beam_pipeline/padding.py),
  so that a shuffle or a batching state carries the records' real values, not padded arrays (a paper-size record
  is about 1.5x larger padded). Batch mode carries up to --batch_size records per element (a row group's valid
  rows); streaming carries a batch of messages' records.
Beam pickles these between stages (and encodes a sample of them to estimate sizes): Arrow tables pickle as their
buffers, numpy arrays as raw buffers. A zero-copy slice of a table pickles its parent's whole buffers, so a
ScoringBatch cut from a row group pickles as an Arrow IPC stream of its own rows (`__reduce__`): 0.27 MB instead of
24 MB for 256 small-preset records of a 100,000-record row group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NO_TIME = np.iinfo(np.int64).min  # null in the int64 microsecond arrays below
PUBSUB_PREFIX = "pubsub:"


@dataclass
class ParquetChunk:
    path: str
    first_row: int  # row number, in its file, of the table's first row
    table: pa.Table | None  # None when the file (or a row group) could not be read
    error: str | None = None
    kind: str | None = None  # with table None: the dead-letter kind (unreadable_file, unreadable_row_group, ...)
    rows: int | None = None  # with table None: the rows the footer declares for what was not read, if known

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows


@dataclass(frozen=True)
class Message:
    """A Pub/Sub message as received: what decoding needs, nothing else."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time_us: int


@dataclass
class ScoringBatch:
    table: pa.Table  # valid input v1 records, canonical layout (id, modalities, label, event_time), not padded
    event_time_us: np.ndarray  # (B,) int64 microseconds since the epoch, NO_TIME when unknown
    publish_time_us: np.ndarray | None  # (B,) int64, streaming: Pub/Sub publication time; None in batch mode
    source: str  # a file path (rows below say where), or "pubsub" (message_ids below say which)
    rows: np.ndarray | None = None  # (B,) int64 row of each record in `source`; None for messages
    message_ids: np.ndarray | None = None  # (B,) object: each record's Pub/Sub message id; None for files

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.table.column("id").to_pylist(), dtype=object)

    def source_of(self, i: int) -> str:
        """Where record i came from, as dead letter v1 `source` writes it: `path#row=N` or `pubsub:<id>`."""
        if self.message_ids is not None:
            return f"{PUBSUB_PREFIX}{self.message_ids[i]}"
        return self.source if self.rows is None else f"{self.source}#row={int(self.rows[i])}"

    def sources(self) -> list[str]:
        return [self.source_of(i) for i in range(len(self))]

    def __reduce__(self):
        """Pickle the records' own bytes: a slice's table is written as an Arrow IPC stream (only its rows), not with
        its parent's buffers."""
        fields = (self.event_time_us, self.publish_time_us, self.source, self.rows, self.message_ids)
        if self.table.get_total_buffer_size() <= 1.25 * self.table.nbytes + 4096:
            return ScoringBatch, (self.table, *fields)
        return _scoring_batch_from_ipc, (_ipc_bytes(self.table), *fields)

    def take(self, index: np.ndarray) -> "ScoringBatch":
        index = np.asarray(index, dtype=np.int64)
        return ScoringBatch(
            table=self.table.take(pa.array(index)),
            event_time_us=self.event_time_us[index],
            publish_time_us=None if self.publish_time_us is None else self.publish_time_us[index],
            source=self.source,
            rows=None if self.rows is None else self.rows[index],
            message_ids=None if self.message_ids is None else self.message_ids[index],
        )


def _ipc_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _scoring_batch_from_ipc(data: pa.Buffer, *fields) -> ScoringBatch:
    return ScoringBatch(pa.ipc.open_stream(data).read_all(), *fields)
