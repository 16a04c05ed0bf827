"""The scoring job against real servers (tests/servers.py): the Pub/Sub emulator (streaming), the GCS emulator
(gs:// input, model and outputs), Prometheus and a Pushgateway (metrics).

The streaming job runs as `python -m beam_pipeline.run` in a subprocess on the streaming DirectRunner; the test
waits until every published message has come back as a prediction or a dead letter, reads the worker's metrics
through Prometheus, then stops the process by its PID (cancel() would wait out the reader's 30 s pull).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector

from beam_pipeline.run import run
from beam_pipeline.samples import bad_records
from emmr.scorer import Scorer
from schemas.arrow import dead_letter_schema, prediction_schema
from schemas.message import encode_record
from servers import free_port, http_get, query
from test_pipeline import trained  # noqa: F401 - session fixture: synthetic data and a model made by the emmr CLI
from test_pipeline_batch import direct_scores

pytestmark = pytest.mark.integration
RUNNER = "--runner=DirectRunner"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _malformed(spec) -> list[tuple[bytes, dict, str]]:
    """(data, attributes, expected dead-letter kind) of messages that must not be scored."""
    table, _ = bad_records(spec.modalities, spec.num_classes)
    by_id = {r: i for i, r in enumerate(table.column("id").to_pylist())}

    def message(rid):
        return encode_record(table.slice(by_id[rid], 1).to_batches()[0])

    out = [(b"\x00not an arrow stream", {"schema_version": "1"}, "corrupt_message"),
           (message("bad-nan")[0], {}, "bad_attributes"),  # no schema_version attribute
           (message("bad-nan")[0], {"schema_version": "7"}, "unknown_schema_version")]
    for rid, kind in [("bad-nan", "non_finite"), ("bad-too-long", "too_long"), ("bad-all-missing", "no_modality"),
                      ("bad-label", "label_out_of_range"), ("bad-huge", "non_finite_output")]:
        data, attributes = message(rid)
        out.append((data, attributes, kind))
    return out


@pytest.mark.slow
def test_streaming_from_pubsub_every_message_comes_back(pubsub_emulator, prometheus, trained, tmp_path):  # noqa: F811
    em = pubsub_emulator
    t_in, t_out, t_dead = _name("emmr-in"), _name("emmr-out"), _name("emmr-dead")
    s_in = em.create_subscription(_name("emmr-in-sub"), t_in)
    s_out = em.create_subscription(_name("emmr-out-sub"), t_out)
    s_dead = em.create_subscription(_name("emmr-dead-sub"), t_dead)
    spec = Scorer.load(trained["model"]).config

    # The records, published by the real CLI; then the malformed messages, published by hand.
    env = {**os.environ, **em.env}
    published = subprocess.run([sys.executable, "-m", "emmr.cli", "publish", "--topic", em.topic_path(t_in),
                                "--data", trained["data"]], env=env, capture_output=True, text=True, timeout=300)
    assert published.returncode == 0, published.stderr
    records = pq.read_table(trained["files"]).column("id").to_pylist()
    malformed = _malformed(spec)
    malformed_ids = [em.publish(t_in, data, **attributes) for data, attributes, _ in malformed]
    total = len(records) + len(malformed)

    port = free_port()
    log = open(tmp_path / "job.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.run", RUNNER, "--streaming", "--input_subscription", s_in,
         "--output_topic", em.topic_path(t_out), "--dead_letter", em.topic_path(t_dead), "--model", trained["model"],
         "--batch_size", "32", "--batch_duration_s", "0.5", "--metrics_port", str(port), "--metrics_addr", "127.0.0.1",
         "--output", str(tmp_path / "files" / "predictions"), "--window_s", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        job = _name("emmr-streaming")
        prometheus.add_target(f"127.0.0.1:{port}", job=job)
        predictions, dead = [], []
        deadline = time.monotonic() + 240
        while len(predictions) + len(dead) < total and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            predictions += em.pull(s_out, expected=None, timeout=3)
            dead += em.pull(s_dead, expected=None, timeout=3)
        assert len(predictions) + len(dead) == total, (len(predictions), len(dead), total)

        # Every record comes back once: as a prediction, or as a dead letter with its reason.
        rows = [json.loads(m.data) for m in predictions]
        letters = [json.loads(m.data) for m in dead]
        assert all(set(r) == set(prediction_schema().names) for r in rows)
        assert all(set(d) == set(dead_letter_schema().names) for d in letters)
        scored_ids = sorted(r["id"] for r in rows)
        assert sorted(scored_ids + [d["id"] for d in letters if d["id"] in records]) == sorted(records)
        assert [m.attributes["record_id"] for m in predictions] == [r["id"] for r in rows]
        by_source = {d["source"]: d for d in letters}
        for message_id, (_, _, kind) in zip(malformed_ids, malformed):
            assert by_source[f"pubsub:{message_id}"]["error_kind"] == kind
        assert len(letters) == len(malformed)  # the synthetic records are all valid
        # Streaming outputs carry their latency (publication to scoring) and agree with the model.
        assert all(r["latency_s"] is not None and 0 <= r["latency_s"] < 300 for r in rows)
        want = direct_scores({"model": trained["model"], "tables": [pq.read_table(trained["files"])]})
        for r in rows:
            np.testing.assert_allclose(r["probabilities"], want[r["id"]][0], rtol=1e-4, atol=1e-6)
            assert r["label_index"] == want[r["id"]][1] and r["key_missing"] == want[r["id"]][2]

        # The worker serves /metrics; Prometheus scrapes it and sees every record.
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and f"emmr_input_records_total {float(total)}" in body.decode()
        result = query(prometheus.url, f'sum(emmr_records_total{{job="{job}"}})', timeout=60,
                       predicate=lambda r: bool(r) and float(r[0]["value"][1]) == total)
        assert float(result[0]["value"][1]) == total
        kinds = query(prometheus.url, f'emmr_dead_letters_total{{job="{job}"}}', timeout=30)
        assert {k["metric"]["reason"]: float(k["value"][1]) for k in kinds} == {
            kind: float(sum(1 for *_, k in malformed if k == kind)) for *_, kind in malformed}
        # ... and to windowed Parquet files beside the topic (a window's files appear once the window closes)
        files, deadline = [], time.monotonic() + 60
        while not files and time.monotonic() < deadline:
            files = [f for f in (tmp_path / "files").glob("predictions-*.parquet")]
            time.sleep(0.5)
        assert files, "no windowed prediction files"
        in_files = pq.read_table(files)
        assert 0 < in_files.num_rows <= len(rows) and set(in_files.column("id").to_pylist()) <= set(scored_ids)
        assert in_files.schema.metadata == prediction_schema().metadata

        latencies = query(prometheus.url, f'emmr_end_to_end_latency_seconds_count{{job="{job}"}}', timeout=30)
        assert float(latencies[0]["value"][1]) == len(rows)
    finally:
        _stop(proc)
        log.close()


def test_gcs_input_model_and_outputs(gcs_emulator, trained, tmp_path):  # noqa: F811
    from apache_beam.io.filesystems import FileSystems

    bucket = gcs_emulator.create_bucket(_name("emmr-gcs"))
    root = f"gs://{bucket}"

    def upload(local: str, remote: str) -> None:
        with open(local, "rb") as src, FileSystems.create(remote) as dst:
            dst.write(src.read())

    for f in trained["files"]:
        upload(f, f"{root}/data/{os.path.basename(f)}")
    for name in os.listdir(trained["model"]):
        upload(os.path.join(trained["model"], name), f"{root}/model/{name}")
    spec = Scorer.load(trained["model"]).config
    table, expected = bad_records(spec.modalities, spec.num_classes)
    pq.write_table(table, tmp_path / "bad.parquet")
    upload(str(tmp_path / "bad.parquet"), f"{root}/data/bad.parquet")

    summary = run([RUNNER, "--input", f"{root}/data/*.parquet", "--model", f"{root}/model",
                   "--output", f"{root}/out/predictions", "--dead_letter", f"{root}/out/dead_letters",
                   "--summary_json", f"{root}/out/summary.json", "--batch_size", "128"])
    fs = gcs_emulator.pyarrow_fs()
    files = {i.path for i in fs.get_file_info(FileSelector(f"{bucket}/out"))}
    assert not [f for f in files if "/.temp-" in f]  # the writers' temporary files are gone
    predictions = pq.read_table([f for f in files if "/predictions" in f], filesystem=fs)
    dead = pq.read_table([f for f in files if "/dead_letters" in f], filesystem=fs)
    records = pq.read_table(trained["files"]).num_rows + table.num_rows
    assert summary.conserved and summary.records_in == records == predictions.num_rows + dead.num_rows
    assert predictions.schema.metadata == prediction_schema().metadata
    want = {(i, k) for i, kinds in expected.items() for k in kinds if k}
    assert set(zip(dead.column("id").to_pylist(), dead.column("error_kind").to_pylist())) == want
    assert all(s.startswith(f"{root}/data/bad.parquet#row=") for s in dead.column("source").to_pylist())
    direct = direct_scores({"model": trained["model"], "tables": [pq.read_table(trained["files"]), table]})
    got = dict(zip(predictions.column("id").to_pylist(), predictions.column("probabilities").to_pylist()))
    assert got.keys() == direct.keys()
    for rid, (probs, *_) in direct.items():
        np.testing.assert_allclose(got[rid], probs, rtol=1e-4, atol=1e-6)
    with FileSystems.open(f"{root}/out/summary.json") as f:
        assert json.loads(f.read())["records_in"] == records


def test_batch_metrics_reach_prometheus_through_the_pushgateway(prometheus, trained, tmp_path):  # noqa: F811
    job = _name("emmr-batch")
    spec = Scorer.load(trained["model"]).config
    table, _ = bad_records(spec.modalities, spec.num_classes)
    pq.write_table(table, tmp_path / "bad.parquet")
    for f in trained["files"]:
        os.symlink(f, tmp_path / os.path.basename(f))
    summary = run([RUNNER, "--input", str(tmp_path / "*.parquet"), "--model", trained["model"],
                   "--output", str(tmp_path / "out/p"), "--dead_letter", str(tmp_path / "out/d"),
                   "--pushgateway", prometheus.pushgateway.address, "--job_name", job])
    assert summary.conserved

    def value(promql: str) -> float:
        result = query(prometheus.url, promql, timeout=60)
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    sel = f'job="{job}"'
    assert value(f"emmr_input_records_total{{{sel}}}") == summary.records_in
    assert value(f'emmr_records_total{{{sel},outcome="predicted"}}') == summary.predictions
    assert value(f'emmr_records_total{{{sel},outcome="dead_letter"}}') == summary.dead_letters
    assert value(f'sum(emmr_records_total{{{sel}}})') == summary.records_in
    for reason, n in summary.dead_letters_by_reason.items():
        assert value(f'emmr_dead_letters_total{{{sel},reason="{reason}"}}') == n
    for label, n in summary.predictions_by_label.items():
        assert value(f'emmr_predictions_total{{{sel},label="{label}"}}') == n
    for modality, n in summary.key_missing_by_modality.items():
        assert value(f'emmr_key_missing_total{{{sel},modality="{modality}"}}') == n
        assert value(f'emmr_missing_modalities_total{{{sel},modality="{modality}"}}') == summary.missing_by_modality[modality]
    assert value(f'emmr_model_info{{{sel},version="{summary.model_version}",device="cpu",requested_device="cpu"}}') == 1
    assert value(f"emmr_batch_size_records_sum{{{sel}}}") == summary.predictions + 1  # + "bad-huge", scored then NaN
    assert value(f"emmr_inference_latency_seconds_count{{{sel}}}") >= 1
    assert 0 < value(f"emmr_model_load_seconds{{{sel}}}") < 60
    assert 0 < value(f"emmr_job_duration_seconds{{{sel}}}") < 600
    assert abs(value(f"emmr_job_last_success_timestamp_seconds{{{sel}}}") - time.time()) < 600
