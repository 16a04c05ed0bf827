"""Sources: Parquet row groups (batch) and Pub/Sub messages (streaming).

`ReadParquetChunks` is Beam's ReadFromParquetBatched (the same splittable source, split at row groups, Arrow
zero-copy) with what dead letters and bounded memory need:
- each element names its file and the row number of its first row;
- a file that cannot be opened as Parquet becomes one element saying so (-> one `unreadable_file` dead letter),
  and so does a row group that cannot be read (`unreadable_row_group`: a corrupt page, a page whose CRC does not
  match, a layout pyarrow cannot read back), instead of failing the job;
- a file is never read whole: one row group at a time, and within a row group in slices of about READ_BYTES of
  decoded records (bytes per row estimated from the footer: `decoded_bytes`), through a buffered stream, so that
  memory per element stays bounded whatever the file or row-group size. A row group small enough (the usual
  case) is one slice, so duplicate ids are checked across the whole row group;
- a row group whose rows average more than `max_row_bytes` (more than any valid record of the model can take) is
  not read: one `oversized_row_group` element.
Only the columns the job reads are read (id, the modalities, label, event_time).
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.iobase import Read
from apache_beam.io.parquetio import _ParquetSource, _ParquetUtils

from beam_pipeline.dead_letters import OVERSIZED_ROW_GROUP, UNREADABLE_FILE, UNREADABLE_ROW_GROUP
from beam_pipeline.elements import ParquetChunk

READ_BYTES = 64 << 20  # decoded bytes of records per element (a slice of a row group)
READ_BUFFER_BYTES = 8 << 20  # pages are read through a buffer of this size, not whole column chunks at once
DEFAULT_MAX_ROW_BYTES = 4 << 20


# Bytes per value once decoded, by Parquet physical type (BYTE_ARRAY: its offset; the bytes count in the encoded size).
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8, "BYTE_ARRAY": 4,
          "FIXED_LEN_BYTE_ARRAY": 16}


def decoded_bytes(rg: pq.RowGroupMetaData, leaves: list[int]) -> int:
    """An upper estimate of a row group's size once decoded to Arrow, from its footer: every leaf value at its
    width, plus the encoded size (levels, strings). The encoded size alone is no bound: dictionary and run-length
    encodings make a column of repeated values tiny in the file and large in memory."""
    total = 0
    for j in leaves:
        c = rg.column(j)
        total += max(c.num_values, 0) * _WIDTH.get(c.physical_type, 8) + max(c.total_uncompressed_size, 0)
    return total


def _leaves(pf: pq.ParquetFile, columns: list[str] | None) -> list[int]:
    """Indexes of the Parquet leaf columns under the top-level columns read (all when None)."""
    schema = pf.metadata.schema
    return [j for j in range(len(schema))
            if columns is None or schema.column(j).path.split(".")[0] in columns]


def row_group_chunks(pf: pq.ParquetFile, path: str, index: int, first_row: int, columns: list[str] | None,
                     max_row_bytes: int, read_bytes: int | None = None):
    """The ParquetChunks of one row group: slices of about `read_bytes` decoded bytes; or one element without a
    table when the row group is oversized or cannot be read (from the first row not read)."""
    rg = pf.metadata.row_group(index)
    rows = rg.num_rows
    if rows <= 0:
        return
    per_row = decoded_bytes(rg, _leaves(pf, columns)) / rows
    where = f"row group {index} (rows {first_row}..{first_row + rows - 1})"
    if per_row > max_row_bytes:
        yield ParquetChunk(path, first_row, None, f"{where}: {per_row:.0f} bytes per row on average once decoded "
                           f"(from the footer), over the limit {max_row_bytes}; not read", kind=OVERSIZED_ROW_GROUP,
                           rows=rows)
        return
    slice_rows = max(1, min(rows, int((read_bytes or READ_BYTES) // max(per_row, 1.0))))
    done = 0
    try:
        for batch in pf.iter_batches(batch_size=slice_rows, row_groups=[index], columns=columns, use_threads=False):
            yield ParquetChunk(path, first_row + done, pa.Table.from_batches([batch]))
            done += batch.num_rows
    except Exception as e:  # noqa: BLE001 - an unreadable row group becomes one dead letter, the job goes on
        if done < rows:
            yield ParquetChunk(path, first_row + done, None,
                               f"{where}: rows {first_row + done}..{first_row + rows - 1} cannot be read: "
                               f"{type(e).__name__}: {e}", kind=UNREADABLE_ROW_GROUP, rows=rows - done)


class _ParquetChunkSource(_ParquetSource):
    """_ParquetSource (as in ReadFromParquetBatched) yielding ParquetChunk(path, first_row, table)."""

    def __init__(self, file_pattern, columns=None, validate=True, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
        super().__init__(file_pattern, validate=validate, columns=columns)
        self._max_row_bytes = max_row_bytes

    def read_records(self, file_name, range_tracker):
        start_offset = range_tracker.start_position() or 0
        next_block_start = -1

        def split_points_unclaimed(stop_position):
            return 0 if next_block_start >= stop_position else range_tracker.SPLIT_POINTS_UNKNOWN

        range_tracker.set_split_points_unclaimed_callback(split_points_unclaimed)
        f = self.open_file(file_name)
        try:
            # page CRCs are checked where the writer recorded them (write_page_checksum)
            pf = pq.ParquetFile(f, buffer_size=READ_BUFFER_BYTES, page_checksum_verification=True)
            columns = None
            if self._columns is not None:
                columns = [c for c in self._columns if c in pf.schema_arrow.names]
            index = _ParquetUtils.find_first_row_group_index(pf, start_offset)
            row_groups = _ParquetUtils.get_number_of_row_groups(pf)
            next_block_start = _ParquetUtils.get_offset(pf, index) if index != -1 else range_tracker.stop_position()
            first_row = sum(pf.metadata.row_group(i).num_rows for i in range(max(index, 0)))
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes one dead letter
            f.close()
            if start_offset == 0 and range_tracker.try_claim(0):  # one dead letter per file, from its first split
                yield ParquetChunk(file_name, 0, None, f"{type(e).__name__}: {e}", kind=UNREADABLE_FILE)
            return
        with f:
            while range_tracker.try_claim(next_block_start):
                yield from row_group_chunks(pf, file_name, index, first_row, columns, self._max_row_bytes)
                first_row += pf.metadata.row_group(index).num_rows
                if index + 1 < row_groups:
                    index += 1
                    next_block_start = _ParquetUtils.get_offset(pf, index)
                else:
                    next_block_start = range_tracker.stop_position()


class ReadParquetChunks(beam.PTransform):
    """Parquet glob (local or gs://) -> PCollection[ParquetChunk], one per row group (or slice of a large one)."""

    def __init__(self, file_pattern: str, columns: list[str] | None = None, validate: bool = True,
                 max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
        super().__init__()
        self._source = _ParquetChunkSource(file_pattern, validate=validate, columns=columns,
                                           max_row_bytes=max_row_bytes)

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
