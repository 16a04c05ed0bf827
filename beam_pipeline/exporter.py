"""`emmr-score export`: a streaming job's committed Beam metrics, served to Prometheus.

    emmr-score export --job_name emmr-streaming --project P --region R [--port 9465] [--poll_s 30]
    emmr-score export --job local-20260720T030012Z-1a2b3c [--port 9465]      # a local run (its job store record)
    emmr-score export --job_json job.json --metrics_json metrics.json        # saved Dataflow API responses

Counts come from the job's committed Beam metrics (a bundle Dataflow retried counts once), read every --poll_s
seconds from the Dataflow API (the active job of that name, found again after an update or a relaunch), the local
job store, or saved responses, through the same code as `emmr-score report` (beam_pipeline/jobs.py,
metrics.Snapshot). They are served as job-level totals, labelled job=<job name> (scrape with honor_labels), so
they neither double-count retries nor vanish when workers scale, which the workers' own /metrics counters do:
those count attempted work and stay for what only a worker knows (latency histograms, the model it serves).
deploy/prometheus/prometheus.yml labels the two `work="committed"` and `work="attempted"`.

Served: every counter of beam_pipeline/metrics.py (its known series at 0 from the start), the histograms' count and
sum (`_count`, `_sum`), and the exporter's own `emmr_exporter_last_poll_timestamp_seconds` (the alerts watch it)
and `emmr_exporter_attempted_only` (1 when the runner reported a count only as attempted).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from beam_pipeline import jobs, metrics
from beam_pipeline.flags import add_job_source_arguments
from beam_pipeline.report import ModelFacts

log = logging.getLogger("beam_pipeline")
DEFAULT_PORT = 9465
LAST_POLL = "emmr_exporter_last_poll_timestamp_seconds"
ATTEMPTED_ONLY = "emmr_exporter_attempted_only"


class CommittedMetrics:
    """A prometheus_client collector of the latest snapshot of a job's committed metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self.snapshot: metrics.Snapshot | None = None
        self.job: jobs.JobInfo | None = None
        self.known: dict = {}
        self.polled_at: float | None = None

    def update(self, job: jobs.JobInfo, snapshot: metrics.Snapshot, known: dict) -> None:
        with self._lock:
            self.job, self.snapshot, self.known, self.polled_at = job, snapshot, known, time.time()

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            job, snapshot, known, polled_at = self.job, self.snapshot, self.known, self.polled_at
        if snapshot is None:
            return
        name = job.name or job.id
        for m in metrics.ALL:
            if m.kind == metrics.COUNTER:
                fam = CounterMetricFamily(m.name, m.help, labels=["job", *m.labels])
                values = {tuple(l.get(k, "") for k in m.labels): 0 for l in known.get(m.name, [])} if m.labels else {(): 0}
                for series, v in snapshot.counters.items():
                    series_name, labels = metrics.parse_series(series)
                    if series_name == m.name:
                        key = tuple(labels.get(k, "") for k in m.labels)
                        values[key] = values.get(key, 0) + v
                for key, v in values.items():
                    fam.add_metric([name, *key], v)
                yield fam
            elif m.kind == metrics.HISTOGRAM:
                count, total = snapshot.distributions.get(m.beam_name, (0, 0))
                for suffix, value in (("_count", count), ("_sum", total / 1e6 if m.seconds else total)):
                    fam = GaugeMetricFamily(m.name + suffix, f"{m.help} ({suffix[1:]}, committed)", labels=["job"])
                    fam.add_metric([name], value)
                    yield fam
        fam = GaugeMetricFamily(LAST_POLL, "Unix time of the exporter's last successful read of the job's metrics.",
                                labels=["job"])
        fam.add_metric([name], polled_at)
        yield fam
        fam = GaugeMetricFamily(ATTEMPTED_ONLY, "1 when the runner reported some count only as attempted (a retried "
                                "bundle counts again there), 0 when every count is committed.", labels=["job"])
        fam.add_metric([name], 1.0 if snapshot.attempted_only else 0.0)
        yield fam


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emmr-score export", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job_name", help="Dataflow: follow the active job of this name (default emmr-streaming)")
    add_job_source_arguments(p, saved_note="; re-read at every poll")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"serve /metrics here (default {DEFAULT_PORT})")
    p.add_argument("--addr", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    p.add_argument("--poll_s", type=float, default=30.0, help="seconds between reads of the job's metrics (default 30)")
    p.add_argument("--once", action="store_true", help="read once, print the series, exit (no server)")
    return p


def read(args) -> tuple[dict, dict]:
    """The Job and JobMetrics documents the arguments point at; raises jobs.JobNotFound or ValueError."""
    if args.job_json or args.metrics_json:
        if not (args.job_json and args.metrics_json):
            raise ValueError("give --job_json and --metrics_json together")
        return jobs.read_documents(args.job_json, args.metrics_json)
    if args.job and args.job.startswith(jobs.LOCAL_PREFIX):
        return jobs.read_local(args.job, args.jobs_dir)
    if not (args.project and args.region):
        raise ValueError("a Dataflow job: give --project and --region")
    job_id = args.job or jobs.active_dataflow_job(args.job_name or "emmr-streaming", args.project, args.region)
    return jobs.fetch_dataflow(job_id, args.project, args.region)


def poll(args, collector: CommittedMetrics, models: dict) -> bool:
    """One read of the job's metrics into the collector; False (logged) when it failed."""
    try:
        job_doc, metrics_doc = read(args)
    except Exception as e:  # noqa: BLE001 - keep serving the last values; the staleness alert tells
        log.warning("cannot read the job's metrics: %s", metrics.redact(str(e)))
        return False
    job = jobs.parse_job(job_doc)
    model_path = job.options.get("model")
    if model_path not in models:
        models[model_path] = ModelFacts.read(model_path).known_series()
    snapshot = metrics.Snapshot.from_results(jobs.parse_metrics(metrics_doc, metrics.NAMESPACE))
    collector.update(job, snapshot, models[model_path])
    return True


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    collector, models = CommittedMetrics(), {}
    if args.once:
        from prometheus_client import CollectorRegistry, generate_latest

        if not poll(args, collector, models):
            return 2
        registry = CollectorRegistry()
        registry.register(collector)
        print(generate_latest(registry).decode(), end="")
        return 0
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector)
    start_http_server(args.port, addr=args.addr, registry=registry)
    log.info("serving the committed metrics on http://%s:%d/metrics, read every %.0f s", args.addr, args.port,
             args.poll_s)
    while True:
        poll(args, collector, models)
        time.sleep(args.poll_s)
