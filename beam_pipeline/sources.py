"""Sources: Parquet row groups (batch) and Pub/Sub messages (streaming).

`ReadParquetChunks` is Beam's ReadFromParquetBatched (the same splittable source, split at row groups, each row
group one element, Arrow zero-copy) with two additions that dead letters need: each element names its file and
the row number of its first row, and a file that cannot be opened as Parquet becomes one element saying so
instead of failing the job. Only the columns the job reads are read (id, the modalities, label, event_time).
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.iobase import Read
from apache_beam.io.parquetio import _ParquetSource, _ParquetUtils

from beam_pipeline.elements import ParquetChunk


class _ParquetChunkSource(_ParquetSource):
    """_ParquetSource (as in ReadFromParquetBatched) yielding ParquetChunk(path, first_row, table)."""

    def read_records(self, file_name, range_tracker):
        start_offset = range_tracker.start_position() or 0
        next_block_start = -1

        def split_points_unclaimed(stop_position):
            return 0 if next_block_start >= stop_position else range_tracker.SPLIT_POINTS_UNKNOWN

        range_tracker.set_split_points_unclaimed_callback(split_points_unclaimed)
        f = self.open_file(file_name)
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes one dead letter
            f.close()
            if start_offset == 0 and range_tracker.try_claim(0):  # one dead letter per file, from its first split
                yield ParquetChunk(file_name, 0, None, f"{type(e).__name__}: {e}")
            return
        with f:
            columns = None
            if self._columns is not None:
                columns = [c for c in self._columns if c in pf.schema_arrow.names]
            index = _ParquetUtils.find_first_row_group_index(pf, start_offset)
            next_block_start = _ParquetUtils.get_offset(pf, index) if index != -1 else range_tracker.stop_position()
            row_groups = _ParquetUtils.get_number_of_row_groups(pf)
            first_row = sum(pf.metadata.row_group(i).num_rows for i in range(max(index, 0)))
            while range_tracker.try_claim(next_block_start):
                table = pf.read_row_group(index, columns)
                yield ParquetChunk(file_name, first_row, table)
                first_row += table.num_rows
                if index + 1 < row_groups:
                    index += 1
                    next_block_start = _ParquetUtils.get_offset(pf, index)
                else:
                    next_block_start = range_tracker.stop_position()


class ReadParquetChunks(beam.PTransform):
    """Parquet glob (local or gs://) -> PCollection[ParquetChunk], one per row group."""

    def __init__(self, file_pattern: str, columns: list[str] | None = None, validate: bool = True):
        super().__init__()
        self._source = _ParquetChunkSource(file_pattern, validate=validate, columns=columns)

    def expand(self, pbegin):
        return pbegin | Read(self._source)


class ReadMessages(beam.PTransform):
    """Pub/Sub subscription or topic -> PCollection[PubsubMessage] (data, attributes, id, publish time)."""

    def __init__(self, subscription: str | None = None, topic: str | None = None):
        super().__init__()
        self._subscription, self._topic = subscription, topic

    def expand(self, pbegin):
        return pbegin | beam.io.ReadFromPubSub(subscription=self._subscription, topic=self._topic,
                                               with_attributes=True)
