"""Every metric of the job, declared once, recorded twice: as Beam metrics and as Prometheus metrics.

Names follow Prometheus conventions: prefix `emmr_`, base units (seconds, records), counters end in `_total`,
labels carry no record ids (only modality, label, reason, outcome, model version and device).

- Beam metrics (namespace `emmr`) are what every runner aggregates: Dataflow shows them and sends them to Cloud
  Monitoring, and a batch run reads them at the end for its summary and its Pushgateway push. Beam counters
  have no labels, so a labelled counter is named like the Prometheus series: `emmr_records_total{outcome=predicted}`.
  Beam distributions hold integers: durations are recorded in microseconds under `..._microseconds`
  (`emmr_inference_latency_seconds` -> `emmr_inference_latency_microseconds`) and pushed back in seconds.
- Prometheus metrics (prometheus_client, the process's default registry) are what a streaming worker serves on
  `/metrics` (`serve`, once per worker process, on the first free port from --metrics_port up).
- A batch run pushes a summary built from the Beam metrics (`summary_registry`) to a Pushgateway with the
  grouping key job=<job name>: counters, the histograms as count and sum, model info and load time, job duration
  and last success time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from apache_beam.metrics.metric import Metrics, MetricsFilter

log = logging.getLogger(__name__)

NAMESPACE = "emmr"
COUNTER, HISTOGRAM, GAUGE = "counter", "histogram", "gauge"
PORT_RANGE = 64  # worker processes per machine that each get a /metrics port
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class MetricDef:
    name: str  # the Prometheus name
    kind: str  # COUNTER, HISTOGRAM or GAUGE
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    batch_only: bool = False  # pushed by batch runs only (not served by workers)

    @property
    def seconds(self) -> bool:
        return self.name.endswith("_seconds")

    @property
    def beam_name(self) -> str:
        """The Beam metric name: integer microseconds for durations."""
        return self.name[: -len("_seconds")] + "_microseconds" if self.seconds else self.name


INPUT_RECORDS = MetricDef(
    "emmr_input_records_total", COUNTER,
    "Records that entered the job: Parquet rows read (a file that cannot be read counts as one) or Pub/Sub "
    "messages pulled. At the end of a batch run it equals the sum of emmr_records_total.")
RECORDS = MetricDef(
    "emmr_records_total", COUNTER,
    "Records that left the job, by outcome: predicted (a prediction v1 row or message) or dead_letter.",
    ("outcome",))
DEAD_LETTERS = MetricDef(
    "emmr_dead_letters_total", COUNTER,
    "Dead letters by reason: a validation or message error kind (schemas/README.md), or the job's own: "
    "unreadable_file, unreadable_row_group, oversized_row_group, invalid_utf8, event_time_out_of_range, decode_error, "
    "inference_error, non_finite_output (beam_pipeline/dead_letters.py).", ("reason",))
PREDICTIONS = MetricDef("emmr_predictions_total", COUNTER, "Predictions by predicted label.", ("label",))
MISSING = MetricDef(
    "emmr_missing_modalities_total", COUNTER,
    "Scored records that missed a modality, by modality (a record missing two counts under both).", ("modality",))
KEY_MISSING = MetricDef(
    "emmr_key_missing_total", COUNTER,
    "Scored records whose missing modality was key (its absence flips the label), by that modality.", ("modality",))
ENSEMBLE_USED = MetricDef(
    "emmr_ensemble_used_total", COUNTER, "Predictions decided by the ensemble branch (Eq. 13).")
BATCH_SIZE = MetricDef(
    "emmr_batch_size_records", HISTOGRAM, "Records per inference call of the model.", buckets=SIZE_BUCKETS)
INFERENCE_LATENCY = MetricDef(
    "emmr_inference_latency_seconds", HISTOGRAM,
    "Wall time of one inference call (padding to tensors, model, back to numpy), per batch.",
    buckets=LATENCY_BUCKETS)
END_TO_END_LATENCY = MetricDef(
    "emmr_end_to_end_latency_seconds", HISTOGRAM,
    "Streaming: seconds from a message's publication to its prediction being formatted, per prediction.",
    buckets=LATENCY_BUCKETS)
MODEL_INFO = MetricDef(
    "emmr_model_info", GAUGE, "Always 1; labels name the model served: version, device used, device asked for.",
    ("version", "device", "requested_device"))
MODEL_LOAD = MetricDef("emmr_model_load_seconds", GAUGE, "Seconds the worker took to load the checkpoint.")
MODEL_UPDATES = MetricDef(
    "emmr_model_updates_total", COUNTER,
    "Streaming: candidate models checked for a swap (--model_pattern, --model_updates_subscription), by outcome: "
    "accepted (served from the next batch on) or rejected (unreadable, corrupt or incompatible; the model in "
    "service stays).", ("outcome",))
JOB_DURATION = MetricDef(
    "emmr_job_duration_seconds", GAUGE, "Batch: wall time of the run, from launch to the end of the pipeline.",
    batch_only=True)
JOB_LAST_SUCCESS = MetricDef(
    "emmr_job_last_success_timestamp_seconds", GAUGE, "Batch: Unix time at which the last run finished.",
    batch_only=True)

ALL = (INPUT_RECORDS, RECORDS, DEAD_LETTERS, PREDICTIONS, MISSING, KEY_MISSING, ENSEMBLE_USED, BATCH_SIZE,
       INFERENCE_LATENCY, END_TO_END_LATENCY, MODEL_INFO, MODEL_LOAD, MODEL_UPDATES, JOB_DURATION, JOB_LAST_SUCCESS)
PREDICTED, DEAD_LETTER = "predicted", "dead_letter"

_SERIES = re.compile(r"^(?P<name>[a-z_:][a-z0-9_:]*)(\{(?P<labels>[^}]*)\})?$")


def known_series(modality_names, label_names) -> dict[str, list[dict[str, str]]]:
    """The labelled series a job always has (metric name -> label sets), exported at 0 before their first count
    so that dashboards and rates see them from the start."""
    return {
        RECORDS.name: [{"outcome": PREDICTED}, {"outcome": DEAD_LETTER}],
        PREDICTIONS.name: [{"label": l} for l in label_names],
        MISSING.name: [{"modality": m} for m in modality_names],
        KEY_MISSING.name: [{"modality": m} for m in modality_names],
        MODEL_UPDATES.name: [{"outcome": "accepted"}, {"outcome": "rejected"}],
    }


def series_name(name: str, labels: dict[str, str]) -> str:
    """`name{k=v,...}`: how a labelled series is named among Beam metrics."""
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in labels.items()) + "}"


def parse_series(series: str) -> tuple[str, dict[str, str]]:
    m = _SERIES.match(series)
    if not m:
        return series, {}
    labels = dict(kv.split("=", 1) for kv in (m.group("labels") or "").split(",") if "=" in kv)
    return m.group("name"), labels


# ------------------------------------------------------------------------------------------- Prometheus

_prom_lock = threading.Lock()
_prom: dict[str, object] = {}
_server: dict[str, object] = {}


def _prometheus(metric: MetricDef):
    """The process-wide prometheus_client object of a metric (created on first use, in the default registry)."""
    with _prom_lock:
        obj = _prom.get(metric.name)
        if obj is None:
            import prometheus_client as pc

            if metric.kind == COUNTER:
                obj = pc.Counter(metric.name, metric.help, metric.labels)
            elif metric.kind == HISTOGRAM:
                obj = pc.Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets)
            else:
                obj = pc.Gauge(metric.name, metric.help, metric.labels)
            _prom[metric.name] = obj
        return obj


def serve(port: int, addr: str = "0.0.0.0") -> int | None:
    """Serve /metrics from this process, once: on the first free port in [port, port + 64). Returns the port.

    Port 0 (or below) means off. Every worker process of a machine gets its own port, so that a scrape config
    listing the range sees each of them.
    """
    if port <= 0:
        return None
    with _prom_lock:
        if "port" in _server:
            return _server["port"]
        from prometheus_client import disable_created_metrics, start_http_server

        disable_created_metrics()  # no `_created` series beside every counter and histogram

        for candidate in range(port, min(port + PORT_RANGE, 65536)):
            try:
                server, _ = start_http_server(candidate, addr=addr)
            except OSError:
                continue
            _server.update(port=candidate, server=server)
            log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, candidate)
            return candidate
        raise OSError(f"no free port for /metrics in [{port}, {port + PORT_RANGE}) on {addr}")


def served_port() -> int | None:
    return _server.get("port")


# ------------------------------------------------------------------------------------------- recording


@dataclass
class Recorder:
    """Records a metric as a Beam metric and a Prometheus metric at once. Create one per DoFn or handler."""

    _beam: dict[str, object] = field(default_factory=dict)

    def _beam_counter(self, series: str):
        c = self._beam.get(series)
        if c is None:
            c = self._beam[series] = Metrics.counter(NAMESPACE, series)
        return c

    def declare(self, known: dict[str, list[dict[str, str]]]) -> None:
        """Create the Prometheus series of `known_series` (at 0), and the unlabelled counters."""
        for m in ALL:
            if m.kind != COUNTER or m.batch_only:
                continue
            prom = _prometheus(m)  # an unlabelled counter exists at 0 once created
            for labels in known.get(m.name, []) if m.labels else []:
                prom.labels(**labels)

    def count(self, metric: MetricDef, n: int = 1, **labels: str) -> None:
        if n <= 0:
            return
        self._beam_counter(series_name(metric.name, labels)).inc(int(n))
        prom = _prometheus(metric)
        (prom.labels(**labels) if labels else prom).inc(n)

    def observe(self, metric: MetricDef, value: float, **labels: str) -> None:
        """One observation in base units (seconds, records)."""
        series = series_name(metric.beam_name, labels)
        d = self._beam.get(series)
        if d is None:
            d = self._beam[series] = Metrics.distribution(NAMESPACE, series)
        d.update(int(round(value * 1e6)) if metric.seconds else int(value))
        prom = _prometheus(metric)
        (prom.labels(**labels) if labels else prom).observe(value)

    def observe_many(self, metric: MetricDef, values) -> None:
        for v in values:
            self.observe(metric, float(v))

    def clear(self, metric: MetricDef, **labels: str) -> None:
        """Remove a labelled Prometheus series (a model no longer served); its Beam gauge goes to 0."""
        series = series_name(metric.beam_name, labels)
        g = self._beam.get(series)
        if g is None:
            g = self._beam[series] = Metrics.gauge(NAMESPACE, series)
        g.set(0)
        prom = _prometheus(metric)
        try:
            prom.remove(*(labels[k] for k in metric.labels))
        except KeyError:
            pass

    def set(self, metric: MetricDef, value: float, **labels: str) -> None:
        series = series_name(metric.beam_name, labels)
        g = self._beam.get(series)
        if g is None:
            g = self._beam[series] = Metrics.gauge(NAMESPACE, series)
        g.set(int(round(value * 1e6)) if metric.seconds else int(value))
        prom = _prometheus(metric)
        (prom.labels(**labels) if labels else prom).set(value)


def process_results() -> list:
    """This process's counters and histograms (its Prometheus objects) as Beam MetricResults, attempted only:
    what a local streaming run records for `emmr-score export`, because the streaming DirectRunner's Beam metrics
    miss the counts of stages after the job's batching (the DirectRunner retries no bundle, so attempted is once)."""
    from apache_beam.metrics.cells import DistributionData, DistributionResult
    from apache_beam.metrics.execution import MetricKey, MetricResult
    from apache_beam.metrics.metricbase import MetricName

    out = []
    with _prom_lock:
        objects = dict(_prom)
    for m in ALL:
        obj = objects.get(m.name)
        if obj is None or m.kind == GAUGE:
            continue
        for family in obj.collect():
            values: dict[str, dict[str, float]] = {}
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                series = series_name(m.beam_name if m.kind == HISTOGRAM else m.name, labels)
                values.setdefault(series, {})[sample.name.removeprefix(m.name)] = sample.value
            for series, v in values.items():
                if m.kind == COUNTER:
                    value = int(v.get("_total", v.get("", 0)))
                else:
                    count, total = int(v.get("_count", 0)), v.get("_sum", 0.0) * (1e6 if m.seconds else 1)
                    value = DistributionResult(DistributionData(int(round(total)), count, 0, 0))
                out.append(MetricResult(MetricKey("process", MetricName(NAMESPACE, series)), committed=None,
                                        attempted=value))
    return out


# ------------------------------------------------------------------------------------------- reading back


@dataclass
class Snapshot:
    """Beam metric values of a job in namespace `emmr`, summed over steps: series name -> value.

    Committed values (each successful bundle counted once, whatever the retries) where the runner reports them; a
    metric the runner reports only as attempted is taken as attempted, and `attempted_only` names it (a retried
    bundle may have counted twice there)."""

    counters: dict[str, int]
    distributions: dict[str, tuple[int, int]]  # series -> (count, sum)
    gauges: dict[str, int]
    attempted_only: list[str] = field(default_factory=list)

    @classmethod
    def from_result(cls, result) -> "Snapshot":
        """From a PipelineResult (any runner)."""
        query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
        return cls.from_results([r for kind in ("counters", "distributions", "gauges") for r in query.get(kind, [])])

    @classmethod
    def from_results(cls, results) -> "Snapshot":
        """From Beam MetricResults: a PipelineResult's, or a Dataflow JobMetrics document's (beam_pipeline/jobs.py)."""
        from apache_beam.metrics.cells import DistributionResult, GaugeResult

        counters: dict[str, int] = {}
        dists: dict[str, tuple[int, int]] = {}
        gauges: dict[str, int] = {}
        attempted_only: set[str] = set()
        for r in results:
            if r.key.metric.namespace != NAMESPACE:
                continue
            name, v = r.key.metric.name, r.committed
            if v is None:
                v = r.attempted
                if v is not None:
                    attempted_only.add(name)
            if v is None:
                continue
            if isinstance(v, DistributionResult):
                c, s = dists.get(name, (0, 0))
                dists[name] = (c + v.count, s + v.sum)
            elif isinstance(v, GaugeResult):
                if v.value is not None:
                    gauges[name] = v.value
            else:
                counters[name] = counters.get(name, 0) + int(v or 0)
        return cls(counters, dists, gauges, sorted(attempted_only))

    def total(self, metric: MetricDef, **labels: str) -> int:
        """A counter's value, summed over every series that matches the given labels."""
        out = 0
        for series, v in self.counters.items():
            name, lab = parse_series(series)
            if name == metric.name and all(lab.get(k) == val for k, val in labels.items()):
                out += v
        return out

    def by_label(self, metric: MetricDef, label: str, known: list[str] = ()) -> dict[str, int]:
        """A labelled counter by one label; `known` values appear at 0 when never counted."""
        out: dict[str, int] = {k: 0 for k in known}
        for series, v in self.counters.items():
            name, lab = parse_series(series)
            if name == metric.name and label in lab:
                out[lab[label]] = out.get(lab[label], 0) + v
        return out


def summary_registry(snapshot: Snapshot, job_seconds: float, known: dict[str, list[dict[str, str]]] | None = None,
                     finished_at: float | None = None):
    """A prometheus_client registry holding a batch run's summary (for push_to_gateway); the series of `known`
    are pushed at 0 when the run never counted them."""
    known = known or {}
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    class _Summary:
        def collect(self):
            for m in ALL:
                if m.kind == COUNTER:
                    fam = CounterMetricFamily(m.name, m.help, labels=list(m.labels))
                    values: dict[tuple[str, ...], int] = {tuple(l.get(k, "") for k in m.labels): 0
                                                          for l in known.get(m.name, [])} if m.labels else {(): 0}
                    for series, v in snapshot.counters.items():
                        name, lab = parse_series(series)
                        if name == m.name:
                            key = tuple(lab.get(k, "") for k in m.labels)
                            values[key] = values.get(key, 0) + v
                    for key, v in values.items():
                        fam.add_metric(list(key), v)
                    yield fam
                elif m.kind == HISTOGRAM:
                    # Beam distributions keep count and sum, not buckets: pushed as a summary without quantiles.
                    count, total = snapshot.distributions.get(m.beam_name, (0, 0))
                    if count:
                        fam = SummaryMetricFamily(m.name, m.help)
                        fam.add_metric([], count_value=count, sum_value=total / 1e6 if m.seconds else total)
                        yield fam
            if MODEL_LOAD.beam_name in snapshot.gauges:
                fam = GaugeMetricFamily(MODEL_LOAD.name, MODEL_LOAD.help)
                fam.add_metric([], snapshot.gauges[MODEL_LOAD.beam_name] / 1e6)
                yield fam
            info = GaugeMetricFamily(MODEL_INFO.name, MODEL_INFO.help, labels=list(MODEL_INFO.labels))
            for series, v in snapshot.gauges.items():
                name, lab = parse_series(series)
                if name == MODEL_INFO.name:
                    info.add_metric([lab.get(k, "") for k in MODEL_INFO.labels], v)
            if info.samples:
                yield info
            fam = GaugeMetricFamily(JOB_DURATION.name, JOB_DURATION.help)
            fam.add_metric([], job_seconds)
            yield fam
            fam = GaugeMetricFamily(JOB_LAST_SUCCESS.name, JOB_LAST_SUCCESS.help)
            fam.add_metric([], finished_at if finished_at is not None else time.time())
            yield fam

    registry = CollectorRegistry()
    registry.register(_Summary())
    return registry


_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
_BARE_USERINFO = re.compile(r"^[^/:@\s]+:[^/@\s]*@")  # user:password@host:port, no scheme


def redact(text: str | None) -> str | None:
    """Text fit for logs: credentials in URLs (scheme://user:password@host, or user:password@host) become ***."""
    return None if text is None else _BARE_USERINFO.sub("***@", _USERINFO.sub(r"\1***@", str(text)))


def push_summary(gateway: str, job_name: str, registry) -> None:
    """PUT the summary to the Pushgateway under job=<job_name> (replacing that group's previous push)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job_name, registry=registry, timeout=30)
    log.info("pushed the job summary to the Pushgateway %s (job=%s)", redact(gateway), job_name)

