"""The job's writers: Arrow tables to Parquet files or to Pub/Sub messages.

Parquet, batch: beam_pipeline/batch_writes.py (files `<prefix>-SSSSS-of-NNNNN.parquet`, finalised together once the
job's bundles are done, then `_SUCCESS`), with this module's ParquetTableSink.

Parquet, streaming: per event-time window (the job windows its input, beam_pipeline/pipeline.py), Beam's
`fileio.WriteToFiles` with a Parquet sink: the window's tables are spread over `shards` keys, grouped when the
window's trigger fires, each group written to a temporary file, and the window's temporary files moved to their
final names in one step by Beam. So each window gets at most `shards` files per firing, named deterministically:

    <prefix>-<window start>-<window end>-<job id>-<pane>-<i>-of-<n>.parquet

(times as YYYYMMDDTHHMMSSZ; the job id is the run's id, made at launch (beam_pipeline/run.py); the pane index is 0
for the window's first firing and counts late firings; i of n number the files of one finalising step, which
may hold a late firing's files too). A retried bundle rewrites the same names with the same rows instead of
adding files; a restarted job writes under its own id, so it can never replace a file of an earlier run. The sink writes one row group per ROW_GROUP_ROWS rows as tables arrive, so a file is never held in
memory whole.

Pub/Sub: one message per row, via `to_messages` (JSON with attributes); Beam's WriteToPubSub (Dataflow's own
sink there).

At-least-once on in-process runners (`ack`, beam_pipeline/acks.py): a message is acknowledged once each of its
outputs is durable. Files: after Beam moved a file into place, `_AckWrittenFiles` reads the file's footer, where
the sink recorded the Pub/Sub messages of its rows (`emmr.sources`), or the dead letters' `source` column.
Pub/Sub: a DoFn publishes and waits for the server's confirmation at the end of each bundle.
"""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.gcp.pubsub import PubsubMessage

from beam_pipeline import acks
from beam_pipeline.acks import AckAfter

ROW_GROUP_ROWS = 16384  # rows buffered by the streaming sink before it writes a row group
SOURCES_KEY = b"emmr.sources"  # footer key of a streaming file's Pub/Sub sources (in-process at-least-once only)


def _stamp(t) -> str:
    return t.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")


class WindowFileNaming:
    """fileio file naming: `<name>-<start>-<end>-<job id>-<pane>-<i>-of-<n>.parquet` (see the module docstring)."""

    def __init__(self, name: str, job_id: str | None):
        self.name, self.job_id = name, job_id

    def job(self) -> str:
        if not self.job_id:
            raise RuntimeError("streaming Parquet files need the run id (beam_pipeline/run.py sets it)")
        return self.job_id

    def __call__(self, window, pane, shard_index, total_shards, compression, destination) -> str:
        start, end = getattr(window, "start", None), getattr(window, "end", None)
        span = f"{_stamp(start)}-{_stamp(end)}" if start is not None else "global"
        index = pane.index if pane is not None else 0
        return f"{self.name}-{span}-{self.job()}-{index}-{shard_index:05d}-of-{total_shards:05d}.parquet"


class ParquetTableSink(fileio.FileSink):
    """Arrow tables -> one Parquet file (fileio's FileSink), tables buffered until they hold `row_group_rows` rows,
    then written as one row group (1: each table as it comes). With `sources`, the Pub/Sub sources of its rows go into
    the footer (SOURCES_KEY) for acknowledging after the move. Also the batch writer's sink
    (beam_pipeline/batch_writes.py)."""

    def __init__(self, schema: pa.Schema, sources: bool = False, compression: str = "snappy",
                 row_group_rows: int = ROW_GROUP_ROWS):
        self._schema, self._with_sources, self._compression = schema, sources, compression
        self._row_group_rows = row_group_rows

    def create_metadata(self, destination, full_file_name):
        return fileio.FileMetadata(mime_type="application/vnd.apache.parquet",
                                   compression_type=CompressionTypes.UNCOMPRESSED)

    def open(self, fh) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(fh, self._schema, compression=self._compression)
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._sources: list[str] = []

    def write(self, table: pa.Table) -> None:
        if self._with_sources:
            self._sources += acks.sources_of(table)
        self._pending.append(table.replace_schema_metadata(self._schema.metadata))
        self._rows += table.num_rows
        if self._rows >= self._row_group_rows:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=max(self._rows, 1))
        self._pending, self._rows = [], 0

    def flush(self) -> None:
        self._write_pending()
        if self._with_sources:
            self._writer.add_key_value_metadata({SOURCES_KEY: json.dumps(self._sources)})
        self._writer.close()  # the footer; fileio closes the file handle itself


class _SinkFactory:
    def __init__(self, schema: pa.Schema, sources: bool):
        self.schema, self.sources = schema, sources

    def __call__(self, destination):
        return ParquetTableSink(self.schema, self.sources)


class _AckWrittenFiles(beam.DoFn):
    """After Beam moved a file into place: acknowledge the Pub/Sub messages whose rows it holds."""

    def __init__(self, directory: str, ack: AckAfter):
        self._directory, self._ack = directory, ack

    def process(self, result):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        path = FileSystems.join(self._directory, result.file_name)
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pf = pq.ParquetFile(f)
            meta = pf.metadata.metadata or {}  # the file's key-value metadata (the sink added SOURCES_KEY)
            if SOURCES_KEY in meta:
                sources = json.loads(meta[SOURCES_KEY])
            else:
                sources = pf.read(columns=["source"]).column("source").to_pylist()
        acks.done(self._ack, sources)
        yield path


def split_rows(table: pa.Table, parts: int):
    """A table as up to `parts` contiguous slices (zero-copy): fileio deals a bundle's elements to its shards in
    turn, so each shard gets a share of every table, however few tables a window has."""
    step = -(-table.num_rows // parts) if table.num_rows else 0
    for start in range(0, table.num_rows, max(step, 1)):
        piece = table.slice(start, step)
        if acks.SOURCES_KEY in (table.schema.metadata or {}):
            piece = acks.with_sources(piece, acks.sources_of(table)[start:start + step])
        yield piece


class WriteWindowFiles(beam.PTransform):
    """Streaming: Arrow tables -> Parquet, windowed fileio.WriteToFiles with `shards` files per window (module
    docstring). Returns the FileResults. (Batch: beam_pipeline/batch_writes.py.)"""

    def __init__(self, prefix: str, schema: pa.Schema, shards: int = 1, job_id: str | None = None,
                 ack: AckAfter | None = None):
        super().__init__()
        self._prefix, self._schema = prefix, schema
        self._shards, self._job_id, self._ack = shards, job_id, ack

    def expand(self, tables):
        from apache_beam.io.filesystems import FileSystems

        directory, name = FileSystems.split(self._prefix)
        files = (tables
                 | "SplitForShards" >> beam.FlatMap(split_rows, self._shards)
                 | "WriteFiles" >> fileio.WriteToFiles(
            path=directory, file_naming=WindowFileNaming(name, self._job_id),
            sink=_SinkFactory(self._schema, self._ack is not None), shards=self._shards,
            max_writers_per_bundle=0))  # every table goes through the sharded path: `shards` files per window
        if self._ack is not None:
            files | "AckWritten" >> beam.ParDo(_AckWrittenFiles(directory, self._ack))
        return files


class PublishTables(beam.PTransform):
    """Arrow tables -> one Pub/Sub message per row, via `to_messages` (JSON with attributes).

    Beam's WriteToPubSub (Dataflow's own sink there); with `ack` (in-process runs acknowledging after output), a
    DoFn that publishes, waits for the server's confirmation at the end of each bundle, then reports the rows'
    messages written."""

    def __init__(self, topic: str, to_messages, ack: AckAfter | None = None):
        super().__init__()
        self._topic, self._to_messages, self._ack = topic, to_messages, ack

    def expand(self, tables):
        to_messages = self._to_messages
        if self._ack is not None:
            return tables | "PublishAndAck" >> beam.ParDo(_PublishRows(self._topic, to_messages, self._ack))
        return (tables
                | "ToMessages" >> beam.FlatMap(lambda t: [PubsubMessage(d, a) for d, a in to_messages(t)])
                | "Publish" >> beam.io.WriteToPubSub(self._topic, with_attributes=True))


class _PublishRows(beam.DoFn):
    def __init__(self, topic: str, to_messages, ack: AckAfter):
        self._topic, self._to_messages, self._ack = topic, to_messages, ack

    def setup(self):
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.PublisherClient()

    def start_bundle(self):
        self._pending: list = []
        self._sources: list[str] = []

    def process(self, table: pa.Table):
        self._pending += [self._client.publish(self._topic, data, **attributes)
                          for data, attributes in self._to_messages(table)]
        self._sources += acks.sources_of(table)

    def finish_bundle(self):
        for future in self._pending:
            future.result(timeout=120)  # raises: the bundle fails and nothing of it is acknowledged
        acks.done(self._ack, self._sources)
        self._pending, self._sources = [], []
