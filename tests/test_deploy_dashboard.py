"""The dashboard and the alerts against a real Prometheus fed by real runs of the job.

A Prometheus configured from deploy/prometheus/prometheus.yml (same jobs, labels and relabelling; local targets,
1 s scrapes, the real alerts.yml) scrapes a real Pushgateway, to which a real batch run (DirectRunner) pushes its
summary, and the /metrics endpoint of a real streaming run (DirectRunner, in a subprocess, reading the Pub/Sub
emulator). Then every query of every panel of deploy/grafana/emmr-dashboard.json, with Grafana's variables set
to concrete values, must return data with a finite value, every alert rule must evaluate without error, and
none of the alerts that fire at once may fire for these healthy runs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from servers import LOOPBACK, free_port, http_get, query, require_binary, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "emmr-dashboard.json"
BATCH_JOB = "emmr-score-daily"  # the scheduled job's name: the alerts watch it
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": ".*"}
QUERY_TIMEOUT_S = 45.0


def _emmr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "emmr.cli", *args], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Synthetic records (30 % missing one modality) and a model trained on them for one epoch."""
    root = tmp_path_factory.mktemp("deploy-dashboard")
    data, model = root / "data", root / "model"
    _emmr("synth", "--out", str(data), "--records", "300", "--seed", "1", "--preset", "small", "--missing-rate", "0.3")
    _emmr("train", "--data", str(data), "--out", str(model), "--epochs", "1", "--teacher-epochs", "1", "--no-progress",
          "--threads", "1")
    return {"root": root, "data": data, "model": str(model)}


@pytest.fixture(scope="module")
def deploy_prometheus(tmp_path_factory, pushgateway):
    """Prometheus with deploy/prometheus/prometheus.yml made local: the Pushgateway fixture as the gateway target,
    file_sd instead of GCE discovery for the streaming workers, 1 s scrapes and evaluations, alerts.yml loaded."""
    exe = require_binary("prometheus")
    work = tmp_path_factory.mktemp("deploy-prometheus")
    targets = work / "targets"
    targets.mkdir()
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / "alerts.yml")]
    config.pop("alerting")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"pushgateway", "emmr-streaming", "emmr-streaming-exporter"}
    jobs["pushgateway"]["static_configs"][0]["targets"] = [pushgateway.address]
    exporter = jobs["emmr-streaming-exporter"]
    exporter["scrape_interval"] = "1s"
    exporter["file_sd_configs"] = [{"files": [str(targets / "exporter" / "*.json")], "refresh_interval": "1s"}]
    labels = exporter.pop("static_configs")[0]["labels"]
    exporter["relabel_configs"] = [{"target_label": k, "replacement": v} for k, v in labels.items()]
    (targets / "exporter").mkdir()
    workers = jobs["emmr-streaming"]
    workers.pop("gce_sd_configs")
    workers["scrape_interval"] = "1s"
    workers["file_sd_configs"] = [{"files": [str(targets / "*.json")], "refresh_interval": "1s"}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    server, port, _ = start_server(
        "deploy-prometheus", lambda p: [exe, f"--config.file={work / 'prometheus.yml'}",
                                        f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address={LOOPBACK}:{p}",
                                        "--log.level=warn"], "/-/ready", work)
    try:
        yield {"url": f"http://{LOOPBACK}:{port}", "targets": targets}
    finally:
        server.stop()


def _write_bad_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not a Parquet file")


def _run_batch(trained, pushgateway) -> None:
    from beam_pipeline.run import run

    inputs = trained["root"] / "batch-input"
    inputs.mkdir()
    for f in trained["data"].glob("*.parquet"):
        (inputs / f.name).write_bytes(f.read_bytes())
    _write_bad_parquet(inputs / "zz-unreadable.parquet")  # one dead letter (unreadable_file)
    out = trained["root"] / "batch-out"
    summary = run(["--runner=DirectRunner", f"--input={inputs}/*.parquet", f"--output={out}/predictions",
                   f"--dead_letter={out}/dead-letters", f"--model={trained['model']}", f"--pushgateway={pushgateway.address}",
                   f"--job_name={BATCH_JOB}", "--batch_size=64"])
    assert summary.records_in == 301 and summary.predictions == 300 and summary.dead_letters == 1


def _publish_records(pubsub_emulator, topic: str, data_dir: Path, rows: range, pause_s: float = 0.0) -> None:
    import pyarrow.parquet as pq

    from schemas.message import encode_record

    table = pq.read_table(next(data_dir.glob("*.parquet")))
    columns = [c for c in table.schema.names if not c.startswith(("evidence_", "key_")) and c != "dropped"]
    for i in rows:
        data, attributes = encode_record(table.select(columns).slice(i, 1).to_batches()[0])
        pubsub_emulator.publish(topic, data, **attributes)
        time.sleep(pause_s)


def _streaming_worker(trained, pubsub_emulator, metrics_port: int, log_path: Path) -> tuple[subprocess.Popen, dict]:
    name = uuid.uuid4().hex[:8]
    topics = {k: pubsub_emulator.create_topic(f"dash-{k}-{name}") for k in ("in", "out", "dead")}
    subs = {"in": pubsub_emulator.create_subscription(f"dash-in-{name}", topics["in"]),
            "out": pubsub_emulator.create_subscription(f"dash-out-{name}", topics["out"]),
            "dead": pubsub_emulator.create_subscription(f"dash-dead-{name}", topics["dead"])}
    argv = [sys.executable, "-m", "beam_pipeline.run", "--runner=DirectRunner", f"--input_subscription={subs['in']}",
            f"--output_topic={topics['out']}", f"--dead_letter={topics['dead']}", f"--model={trained['model']}",
            f"--metrics_port={metrics_port}", f"--metrics_addr={LOOPBACK}", "--batch_duration_s=0.2",
            "--batch_size=16", "--job_name=emmr-streaming"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ},
                                start_new_session=True)
    return proc, {"topics": topics, "subs": subs}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the worker and only its children
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _concrete(expr: str) -> str:
    for k in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARIABLES[k])
    return expr


def _has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result if "value" in r)


def test_every_dashboard_query_returns_data_from_real_runs(trained, pushgateway, deploy_prometheus, pubsub_emulator,
                                                           tmp_path):
    prom = deploy_prometheus["url"]
    pushgateway.wipe()
    _run_batch(trained, pushgateway)

    port, exporter_port = free_port(), free_port()
    proc, names = _streaming_worker(trained, pubsub_emulator, port, tmp_path / "streaming.log")
    exporter = None
    try:
        (deploy_prometheus["targets"] / "workers.json").write_text(
            json.dumps([{"targets": [f"{LOOPBACK}:{port}"]}]))
        # The worker's DoFns (and so its /metrics server) start with the first elements.
        _publish_records(pubsub_emulator, names["topics"]["in"], trained["data"], range(0, 5))
        deadline = time.monotonic() + 120
        while http_get(f"http://{LOOPBACK}:{port}/metrics", timeout=1)[0] != 200:
            assert proc.poll() is None, (tmp_path / "streaming.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the streaming worker never served /metrics"
            time.sleep(0.5)
        query(prom, 'up{job="emmr-streaming", mode="streaming"} == 1', timeout=60)
        # The job's committed counts: the local run records its metrics in the job store, `emmr-score export`
        # serves them (as it would poll a Dataflow job's).
        store = Path(os.environ["EMMR_JOBS_DIR"])
        deadline = time.monotonic() + 60
        while not (recorded := [d.name for d in store.glob("local-*") if (d / "metrics.json").exists()
                                and json.loads((d / "job.json").read_text())["currentState"] == "JOB_STATE_RUNNING"
                                and json.loads((d / "job.json").read_text())["name"] == "emmr-streaming"]):
            assert time.monotonic() < deadline, "the streaming run never recorded its metrics"
            time.sleep(0.5)
        exporter = subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", "export", "--job", recorded[-1],
                                     "--port", str(exporter_port), "--addr", LOOPBACK, "--poll_s", "1"],
                                    stdout=open(tmp_path / "exporter.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                                    start_new_session=True)
        (deploy_prometheus["targets"] / "exporter" / "exporter.json").write_text(
            json.dumps([{"targets": [f"{LOOPBACK}:{exporter_port}"]}]))
        query(prom, 'up{job="emmr-streaming-exporter"} == 1', timeout=60)
        # The rest spread over a few scrapes, so that the rates see increments; two messages that cannot be decoded.
        _publish_records(pubsub_emulator, names["topics"]["in"], trained["data"], range(5, 40), pause_s=0.1)
        pubsub_emulator.publish(names["topics"]["in"], b"not an arrow stream", schema_version="1", record_id="garbage-1")
        pubsub_emulator.publish(names["topics"]["in"], b"no attributes at all")
        predictions = pubsub_emulator.pull(names["subs"]["out"], expected=40, timeout=120)
        dead = pubsub_emulator.pull(names["subs"]["dead"], expected=2, timeout=60)
        assert len(predictions) == 40 and len(dead) == 2, (tmp_path / "streaming.log").read_text()[-5000:]
        query(prom, 'sum(emmr_records_total{mode="streaming", work="attempted"}) >= 42', timeout=30)
        query(prom, 'sum(emmr_records_total{mode="streaming", work="committed"}) >= 42', timeout=60)
        query(prom, f'emmr_job_last_success_timestamp_seconds{{mode="batch", job="{BATCH_JOB}"}}', timeout=30)
        time.sleep(3)  # a few more scrapes after the last increments, for the rates

        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                expr = _concrete(t["expr"])
                try:
                    query(prom, expr, timeout=QUERY_TIMEOUT_S, predicate=_has_finite_value)
                except AssertionError as e:
                    empty.append(f"{panel['title']} [{t['refId']}]: {expr}\n    {e}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        job_variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
        metric = job_variable["query"]["query"].split("(", 1)[1].split(",")[0]
        jobs = {r["metric"]["job"] for r in query(prom, metric)}
        assert {BATCH_JOB, "emmr-streaming"} <= jobs

        # The alert rules evaluate without error on the real series, and the healthy runs fire none of the
        # alerts that have no `for` delay.
        rules = json.loads(http_get(f"{prom}/api/v1/rules")[1])["data"]["groups"]
        loaded = [r for g in rules for r in g["rules"]]
        assert len(loaded) == len(yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"][0]["rules"]) + sum(
            len(g["rules"]) for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"][1:])
        deadline = time.monotonic() + 10
        while any(r.get("health") == "unknown" for r in loaded) and time.monotonic() < deadline:
            time.sleep(1)
            loaded = [r for g in json.loads(http_get(f"{prom}/api/v1/rules")[1])["data"]["groups"] for r in g["rules"]]
        errors = {r["name"]: r.get("lastError") for r in loaded if r.get("health") != "ok"}
        assert not errors, f"alert rules that fail on real data: {errors}"
        firing = query(prom, 'ALERTS{alertstate="firing"}', timeout=2, predicate=lambda r: True)
        assert not firing, f"alerts firing for healthy runs: {[a['metric'] for a in firing]}"
    finally:
        _stop(proc)
        if exporter is not None:
            _stop(exporter)
