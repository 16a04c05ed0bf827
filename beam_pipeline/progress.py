"""Progress of an in-process batch run (DirectRunner): records out (predictions + dead letters) of records in, with
records/s, so that a long local run is not silent between "loaded model" and the summary.

The DoFns run in this process and count every record that leaves the job in the process's Prometheus counter
`emmr_records_total` (beam_pipeline/metrics.py); a background thread reads it and reports through emmr.progress
(a tqdm bar on a terminal, a log line every 10 s otherwise). The total comes from the input files' Parquet footers.
Remote runs report nothing here: their progress is the runner's (Dataflow's job page) and the /metrics endpoints.
"""

from __future__ import annotations

import logging
import threading

from emmr.progress import Progress, on_terminal

log = logging.getLogger("beam_pipeline")
MAX_FOOTERS = 2000  # more input files than this: the total is left unknown rather than read file by file


def input_records(pattern: str) -> int | None:
    """Records the job will read from `pattern`: the files' row counts (an unreadable file counts as one record, as
    in the job); None when there are too many files to read every footer first."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    files = FileSystems.match([pattern])[0].metadata_list
    if len(files) > MAX_FOOTERS:
        return None
    total = 0
    for f in files:
        try:
            with FileSystems.open(f.path, compression_type="uncompressed") as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        except Exception:  # noqa: BLE001 - the job dead-letters it as one record (unreadable_file)
            total += 1
    return total


def records_out() -> int:
    """Records that left the job so far in this process (predictions + dead letters)."""
    from prometheus_client import REGISTRY

    from beam_pipeline import metrics

    name = metrics.RECORDS.name
    return int(sum(REGISTRY.get_sample_value(name, {"outcome": o}) or 0 for o in (metrics.PREDICTED, metrics.DEAD_LETTER)))


class JobProgress:
    """Start before the pipeline runs, stop when it has finished (also when it failed)."""

    def __init__(self, total: int | None, every_s: float = 10.0, terminal: bool | None = None):
        self._baseline = records_out()  # the counters are process-wide: earlier runs in this process are not ours
        self._terminal = on_terminal() if terminal is None else terminal
        self._meter = Progress("scoring", total=total, every_s=every_s, logger=log, terminal=self._terminal,
                               summary=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="emmr-progress", daemon=True)

    def __enter__(self) -> "JobProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._meter.advance_to(records_out() - self._baseline)
        self._meter.close()

    def _poll(self) -> None:
        while not self._stop.wait(0.5 if self._terminal else 1.0):
            self._meter.advance_to(records_out() - self._baseline)
