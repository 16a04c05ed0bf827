"""Batch Parquet outputs: each output's Arrow tables -> `<prefix>-SSSSS-of-NNNNN.parquet`, then `_SUCCESS`.

    {"predictions": tables, "dead_letters": tables} | "WriteFiles" >> WriteRunFiles(outputs, run_id, run_date)

- `WriteFiles/WritePredictions`, `WriteFiles/WriteDeadLetters`: each bundle writes the tables it gets to a temporary file of its own,
  `<folder>/.temp-<name>/<uuid>.parquet` (name: the prefix's last part, which carries the run id), each table written
  as it comes as a row group of its own, as WriteToParquetBatched did (buffering the tables of a bundle instead kept
  the paper preset's peak memory about 20 MB higher at 10x input: docs/performance.md), and reports the file when the
  bundle finishes;
- `Start` (an Impulse: the step below runs even when no record came) and the reports meet under one key in
  `Collect` (a GroupByKey: after every bundle of the run);
- `Finish` moves each output's files to their final names (`<prefix>-00000-of-00002.parquet`, ...; an
  output that got no rows gets one file with the schema only), removes the temporary folders, then writes
  `_SUCCESS` in each output folder (JSON: run id, run date, every file of the run), last. A failed run writes none.

A retried or duplicated bundle's files are never reported (the runner commits one attempt's outputs), so never
moved, and go with the temporary folder. The finishing step may itself be retried: a file whose temporary copy is
gone and whose final name exists was moved by an earlier attempt. Files are uncompressed, as Beam's
WriteToParquetBatched wrote them before.

This replaces a WriteToParquetBatched per output and a CombineGlobally for the marker: 7 transforms instead of 35,
6 of the DirectRunner's bundles instead of 14, and Beam's cost of building, translating and setting up a job is per
transform and per stage (docs/performance.md, the I/O ceiling).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime, timezone

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from beam_pipeline.writes import ParquetTableSink

log = logging.getLogger(__name__)
SUCCESS = "_SUCCESS"
MIME = "application/vnd.apache.parquet"
KEY = 0  # the one key every report goes under


def temp_folder(prefix: str) -> str:
    folder, name = FileSystems.split(prefix)
    return FileSystems.join(folder, f".temp-{name}")


def final_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


class _WriteBundleFiles(beam.DoFn):
    """Tables -> one temporary Parquet file per bundle; reports (KEY, (output, path)) when the bundle finishes."""

    def __init__(self, output: str, prefix: str, schema: pa.Schema):
        self._output, self._prefix, self._schema = output, prefix, schema

    def start_bundle(self):
        self._file = self._sink = self._path = None

    def process(self, table: pa.Table):
        if self._sink is None:
            self._path = FileSystems.join(temp_folder(self._prefix), f"{uuid.uuid4().hex}.parquet")
            self._file = FileSystems.create(self._path, mime_type=MIME)
            self._sink = ParquetTableSink(self._schema, compression="none", row_group_rows=1)  # each table as it comes
            self._sink.open(self._file)
        self._sink.write(table)

    def finish_bundle(self):
        if self._sink is not None:
            self._sink.flush()
            self._file.close()
            yield GlobalWindows.windowed_value((KEY, (self._output, self._path)))
        self._file = self._sink = self._path = None


def _present(sources: list[str], destinations: list[str]) -> set[str]:
    """Which of these files exist, from one listing of the run's own files: its temporary folders and its final
    names' common prefix, never the whole output folder (which may hold every earlier run's files)."""
    patterns = {FileSystems.join(FileSystems.split(p)[0], "*") for p in sources}
    patterns.add(os.path.commonprefix(destinations) + "*")
    return {m.path for r in FileSystems.match(sorted(patterns)) for m in r.metadata_list}


def _move(sources: list[str], destinations: list[str]) -> None:
    """Rename each source to its destination; a pair an earlier attempt already moved is skipped."""
    if not sources:
        return
    present = _present(sources, destinations)
    pairs = []
    for src, dst in zip(sources, destinations):
        if src in present:
            pairs.append((src, dst))
        elif dst not in present:
            raise BeamIOError(f"neither the temporary file {src} nor its final name {dst} exists")
    if pairs:
        FileSystems.rename([s for s, _ in pairs], [d for _, d in pairs])


def _remove_folder(folder: str) -> None:
    """A temporary folder and what unreported bundles left in it (gs:// has no folder object: its files only)."""
    try:
        leftovers = [m.path for r in FileSystems.match([FileSystems.join(folder, "*")]) for m in r.metadata_list]
        if leftovers:
            FileSystems.delete(leftovers)
        if FileSystems.exists(folder):
            FileSystems.delete([folder])
    except (BeamIOError, OSError) as e:  # not serious: a temporary folder stays behind
        log.warning("could not remove the temporary folder %s: %s", folder, e)


class _FinishRun(beam.DoFn):
    """(KEY, reports) -> every output's files under their final names, then `_SUCCESS` in each output folder."""

    def __init__(self, outputs: dict[str, tuple[str, pa.Schema]], run_id: str | None, run_date: str):
        self._outputs, self._run_id, self._run_date = outputs, run_id, run_date

    def process(self, keyed):
        reported: dict[str, list[str]] = {name: [] for name in self._outputs}
        for report in keyed[1]:
            if report is not None:  # the Impulse's element is None
                output, path = report
                reported[output].append(path)
        files = []
        for name, (prefix, schema) in self._outputs.items():
            temps = sorted(reported[name])
            if not temps:  # no rows: one file with the schema, as Beam's writer did
                temps = [FileSystems.join(temp_folder(prefix), "empty.parquet")]
                with FileSystems.create(temps[0], mime_type=MIME) as f:
                    sink = ParquetTableSink(schema, compression="none")
                    sink.open(f)
                    sink.flush()
            finals = final_names(prefix, len(temps))
            _move(temps, finals)
            files += finals
            _remove_folder(temp_folder(prefix))
        body = json.dumps({"run_id": self._run_id, "run_date": self._run_date, "files": sorted(files),
                           "written_at": datetime.now(timezone.utc).isoformat()}, indent=1).encode()
        for folder in dict.fromkeys(FileSystems.split(prefix)[0] for prefix, _ in self._outputs.values()):
            path = FileSystems.join(folder, SUCCESS)
            with FileSystems.create(path) as f:
                f.write(body)
            yield path


class WriteRunFiles(beam.PTransform):
    """{output name: PCollection of Arrow tables} -> the run's Parquet files and `_SUCCESS` markers (module
    docstring). `outputs` maps each name to its file prefix (with the run id) and schema. Returns the markers."""

    def __init__(self, outputs: dict[str, tuple[str, pa.Schema]], run_id: str | None, run_date: str):
        super().__init__()
        self._outputs, self._run_id, self._run_date = outputs, run_id, run_date

    def expand(self, tables: dict):
        pipeline = next(iter(tables.values())).pipeline
        keyed = beam.typehints.Tuple[int, beam.typehints.Any]
        reports = [tables[name] | f"Write{name.title().replace('_', '')}" >> beam.ParDo(
            _WriteBundleFiles(name, prefix, schema)).with_output_types(keyed)
            for name, (prefix, schema) in self._outputs.items()]
        start = (pipeline | "Start" >> beam.Impulse()
                 | "KeyStart" >> beam.Map(lambda _: (KEY, None)).with_output_types(keyed))
        return ([start, *reports]
                | "Reports" >> beam.Flatten()
                | "Collect" >> beam.GroupByKey()
                | "Finish" >> beam.ParDo(_FinishRun(self._outputs, self._run_id, self._run_date)))
