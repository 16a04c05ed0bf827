"""What flows between the job's stages: numpy arrays and Arrow tables, never a Python object per record.

- `ParquetChunk`: one Parquet row group (or a slice of a large one) as read (file, first row, Arrow table), or a
  file or row group that could not be read.
- `ScoringBatch`: valid records ready for the model: a padded `ModalityBatch` plus what the outputs need
  (event time, publication time, where each record came from). Batch mode carries up to --batch_size records
  per element; streaming carries one (RunInference batches them).
Beam pickles these between fused stages; numpy arrays pickle as raw buffers (torch tensors would be ~20x slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from emmr.batch import ModalityBatch

NO_TIME = np.iinfo(np.int64).min  # null in the int64 microsecond arrays below


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


@dataclass
class ScoringBatch:
    records: ModalityBatch  # ids, padded features, lengths (0 = missing), labels
    event_time_us: np.ndarray  # (B,) int64 microseconds since the epoch, NO_TIME when unknown
    publish_time_us: np.ndarray | None  # (B,) int64, streaming: Pub/Sub publication time; None in batch mode
    source: str  # a file path (rows below say where), or "pubsub:<message id>"
    rows: np.ndarray | None  # (B,) int64 row of each record in `source`; None for messages

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> np.ndarray:
        return self.records.ids

    def source_of(self, i: int) -> str:
        """Where record i came from, as dead letter v1 `source` writes it: `path#row=N` or `pubsub:<id>`."""
        return self.source if self.rows is None else f"{self.source}#row={int(self.rows[i])}"

    def take(self, index: np.ndarray) -> "ScoringBatch":
        return ScoringBatch(
            records=self.records.take(index),
            event_time_us=self.event_time_us[index],
            publish_time_us=None if self.publish_time_us is None else self.publish_time_us[index],
            source=self.source,
            rows=None if self.rows is None else self.rows[index],
        )
