"""A finished (or running) job as the Dataflow API describes it: its Job resource and its JobMetrics.

`emmr-score report` (beam_pipeline/report.py) reads a job through this module, whatever ran it:

- a **Dataflow** job: `fetch_dataflow(job_id, project, region)` asks the Dataflow API (google-cloud-dataflow-client,
  the caller's application-default credentials) for the Job (`projects.locations.jobs.get`, view JOB_VIEW_ALL: its
  state, times and pipeline options) and its metrics (`projects.locations.jobs.getMetrics`);
- a **local** run (DirectRunner and other in-process runners): `record_local` writes the same two documents, in the
  same JSON format (the REST representation of Job and JobMetrics), under the local job store (`jobs_dir()`:
  $EMMR_JOBS_DIR, default ~/.cache/emmr/jobs), named by the run's job id (`local-...`);
- saved API responses: `read_documents(job_json, metrics_json)`.

Either way the documents go through the same parsers (`parse_job`, `parse_metrics`). Beam metrics come in two
versions: **committed** (each successful bundle counted once: what the report uses) and **tentative** (attempted:
retried bundles counted again; the JobMetrics document marks them with context `tentative: "true"`). The parser
keeps both, per step, as Beam MetricResults, so that the report reads a Dataflow job and a local PipelineResult
with one code path (`metrics.Snapshot.from_results`).

JobMetrics' documented format (https://cloud.google.com/dataflow/docs/reference/rest/v1b3/JobMetrics):
`{"metricTime": ..., "metrics": [MetricUpdate]}`, a MetricUpdate being `{"name": {"origin": "user", "name": ...,
"context": {"namespace": ..., "step": ..., "tentative": "true"?}}, "scalar" | "distribution" | "gauge": ...,
"updateTime": ...}`; a user distribution is `{"count", "min", "max", "sum"}` (the Dataflow service also lists each
distribution as four scalars suffixed _COUNT, _MIN, _MAX, _MEAN, for its UI: skipped here).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

from apache_beam.metrics.cells import DistributionData, DistributionResult, GaugeData, GaugeResult
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName

log = logging.getLogger(__name__)

JOB_FILE, METRICS_FILE = "job.json", "metrics.json"
LOCAL_PREFIX = "local-"
TERMINAL = ("DONE", "FAILED", "CANCELLED", "DRAINED", "UPDATED", "STOPPED")
_UI_SUFFIXES = ("_MIN", "_MAX", "_MEAN", "_COUNT")


class JobNotFound(LookupError):
    """No job with that id where it was looked for."""


@dataclass
class JobInfo:
    """What the report needs of a Job resource."""

    id: str
    name: str
    state: str  # Beam's PipelineState names: DONE, FAILED, RUNNING, ... (Dataflow's JOB_STATE_ prefix removed)
    created: float | None  # Unix time
    state_time: float | None  # Unix time of the current state (the end, once terminal)
    options: dict = field(default_factory=dict)  # the job's pipeline options by name (model, output, ...)
    kind: str = ""  # batch or streaming

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def seconds(self) -> float:
        if self.created is None or self.state_time is None:
            return 0.0
        return max(0.0, self.state_time - self.created)


# ------------------------------------------------------------------------------------------- parsing


def _time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_job(doc: dict) -> JobInfo:
    """A Job resource (REST JSON: id, name, currentState, createTime, currentStateTime, type,
    environment.sdkPipelineOptions.options) -> JobInfo."""
    state = str(doc.get("currentState") or "JOB_STATE_UNKNOWN").removeprefix("JOB_STATE_")
    options = ((doc.get("environment") or {}).get("sdkPipelineOptions") or {}).get("options") or {}
    kind = {"JOB_TYPE_BATCH": "batch", "JOB_TYPE_STREAMING": "streaming"}.get(doc.get("type", ""), "")
    return JobInfo(id=str(doc.get("id", "")), name=str(doc.get("name", "")), state=state,
                   created=_time(doc.get("createTime")), state_time=_time(doc.get("currentStateTime")),
                   options=dict(options), kind=kind)


def _number(v):
    if isinstance(v, str):  # int64 values may come as decimal strings
        v = float(v)
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _value(update: dict):
    if update.get("scalar") is not None:
        return _number(update["scalar"])
    if update.get("distribution") is not None:
        d = update["distribution"]
        return DistributionResult(DistributionData(int(_number(d["sum"])), int(_number(d["count"])),
                                                   int(_number(d["min"])), int(_number(d["max"]))))
    if update.get("gauge") is not None:
        g = update["gauge"]
        value = g.get("value") if isinstance(g, dict) else g
        return GaugeResult(GaugeData(int(_number(value))))
    return None


def parse_metrics(doc: dict, namespace: str | None = None) -> list[MetricResult]:
    """A JobMetrics document -> Beam MetricResults (user metrics only; committed and attempted per step).

    A metric reported only as tentative has committed None (the runner does not commit it: the caller decides);
    one reported only as committed has attempted = committed."""
    grouped: dict[MetricKey, dict[str, object]] = {}
    for update in doc.get("metrics") or []:
        name = update.get("name") or {}
        if name.get("origin") != "user":
            continue
        context = name.get("context") or {}
        metric = str(name.get("name", ""))
        if namespace is not None and context.get("namespace") != namespace:
            continue
        if "distribution" not in update and metric.endswith(_UI_SUFFIXES) and metric.rsplit("_", 1)[0] in {
                (u.get("name") or {}).get("name") for u in doc.get("metrics") or [] if "distribution" in u}:
            continue  # the UI's split view of a distribution reported beside it
        key = MetricKey(str(context.get("step", "")), MetricName(str(context.get("namespace", "")), metric))
        version = "attempted" if str(context.get("tentative", "")).lower() == "true" else "committed"
        value = _value(update)
        if value is not None:
            grouped.setdefault(key, {})[version] = value
    out = []
    for key, v in grouped.items():
        committed = v.get("committed")
        out.append(MetricResult(key, committed=committed, attempted=v.get("attempted", committed)))
    return out


# ------------------------------------------------------------------------------------------- writing (local runs)


def metrics_document(results: list[MetricResult], at: float | None = None) -> dict:
    """MetricResults (a local PipelineResult's) -> a JobMetrics document: committed and tentative per step."""
    stamp = _rfc3339(at if at is not None else datetime.now(timezone.utc).timestamp())
    updates = []
    for r in results:
        for version, value in (("committed", r.committed), ("tentative", r.attempted)):
            if value is None:
                continue
            context = {"namespace": r.key.metric.namespace, "step": r.key.step}
            if version == "tentative":
                context["tentative"] = "true"
            update = {"name": {"origin": "user", "name": r.key.metric.name, "context": context}, "updateTime": stamp}
            if isinstance(value, DistributionResult):
                update["distribution"] = {"count": value.count, "min": value.min, "max": value.max, "sum": value.sum}
            elif isinstance(value, GaugeResult):
                if value.value is None:
                    continue
                update["gauge"] = {"value": value.value}
            elif isinstance(value, (int, float)):
                update["scalar"] = value
            else:
                continue
            updates.append(update)
    return {"metricTime": stamp, "metrics": updates}


def job_document(info: JobInfo) -> dict:
    doc = {"id": info.id, "name": info.name, "currentState": "JOB_STATE_" + info.state,
           "type": {"batch": "JOB_TYPE_BATCH", "streaming": "JOB_TYPE_STREAMING"}.get(info.kind, "JOB_TYPE_UNKNOWN"),
           "environment": {"sdkPipelineOptions": {"options": info.options}}}
    if info.created is not None:
        doc["createTime"] = _rfc3339(info.created)
    if info.state_time is not None:
        doc["currentStateTime"] = _rfc3339(info.state_time)
    return doc


def new_local_id(at: float | None = None) -> str:
    """`local-YYYYMMDDTHHMMSSZ-<6 hex>`: the id of a local run (Dataflow assigns its own)."""
    stamp = datetime.fromtimestamp(at if at is not None else datetime.now(timezone.utc).timestamp(), timezone.utc)
    return f"{LOCAL_PREFIX}{stamp.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def new_run_id(job_name: str, at: float | None = None) -> str:
    """`<job name>-YYYYMMDDTHHMMSSZ-<6 hex>`: the id a remote run's files carry, made when it is launched (Dataflow's
    own job id is known only once the job exists)."""
    return new_local_id(at).replace(LOCAL_PREFIX, f"{job_name}-", 1)


def jobs_dir() -> str:
    return os.environ.get("EMMR_JOBS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "emmr", "jobs")


def record_local(info: JobInfo, results: list[MetricResult], directory: str | None = None) -> str:
    """Write a local run's Job and JobMetrics documents under the local job store; returns the folder."""
    folder = os.path.join(directory or jobs_dir(), info.id)
    os.makedirs(folder, exist_ok=True)
    for name, doc in ((JOB_FILE, job_document(info)), (METRICS_FILE, metrics_document(results, info.state_time))):
        temp = os.path.join(folder, f".{name}.tmp")
        with open(temp, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(temp, os.path.join(folder, name))
    return folder


# ------------------------------------------------------------------------------------------- reading


def read_documents(job_json: str, metrics_json: str) -> tuple[dict, dict]:
    """Saved Job and JobMetrics documents (local paths or gs://)."""
    from apache_beam.io.filesystems import FileSystems

    docs = []
    for path in (job_json, metrics_json):
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                docs.append(json.loads(f.read()))
        except Exception as e:  # noqa: BLE001 - missing or not JSON: the same error to the caller
            raise JobNotFound(f"cannot read {path}: {e}") from e
    return docs[0], docs[1]


def read_local(job_id: str, directory: str | None = None) -> tuple[dict, dict]:
    folder = os.path.join(directory or jobs_dir(), job_id)
    if not os.path.isdir(folder):
        raise JobNotFound(f"no local run {job_id!r} in {directory or jobs_dir()} (set EMMR_JOBS_DIR to where the run "
                          "recorded itself)")
    return read_documents(os.path.join(folder, JOB_FILE), os.path.join(folder, METRICS_FILE))


def active_dataflow_job(name: str, project: str, region: str) -> str:
    """The id of the active Dataflow job named `name` (a streaming job keeps its name across updates)."""
    from google.cloud import dataflow_v1beta3 as dataflow

    for job in dataflow.JobsV1Beta3Client().list_jobs(request=dataflow.ListJobsRequest(
            project_id=project, location=region, filter=dataflow.ListJobsRequest.Filter.ACTIVE)):
        if job.name == name:
            return job.id
    raise JobNotFound(f"no active Dataflow job named {name!r} in project {project!r}, region {region!r}")


def fetch_dataflow(job_id: str, project: str, region: str) -> tuple[dict, dict]:
    """The Job (JOB_VIEW_ALL) and JobMetrics documents of a Dataflow job, from the Dataflow API."""
    from google.api_core import exceptions as gexc
    from google.cloud import dataflow_v1beta3 as dataflow

    try:
        job = dataflow.JobsV1Beta3Client().get_job(request=dataflow.GetJobRequest(
            project_id=project, location=region, job_id=job_id, view=dataflow.JobView.JOB_VIEW_ALL))
        metrics = dataflow.MetricsV1Beta3Client().get_job_metrics(request=dataflow.GetJobMetricsRequest(
            project_id=project, location=region, job_id=job_id))
    except gexc.NotFound as e:
        raise JobNotFound(f"no Dataflow job {job_id!r} in project {project!r}, region {region!r}") from e
    return (json.loads(dataflow.Job.to_json(job, use_integers_for_enums=False)),
            json.loads(dataflow.JobMetrics.to_json(metrics, use_integers_for_enums=False)))
