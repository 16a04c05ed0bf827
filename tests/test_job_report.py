"""`emmr-score report`: the job summary from committed Beam metrics (beam_pipeline/report.py, beam_pipeline/jobs.py).

- A local run, for real: the job's own summary (what run() printed) and `emmr-score report --job local-...` (the
  run recorded in the local job store, read back through the Dataflow-format parsers) agree on every count.
- A Dataflow job: the Dataflow API cannot be reached here, so its response parsing is tested on recorded
  responses written in the documented REST format (tests/data/dataflow/: a Job, JOB_VIEW_ALL, and its JobMetrics
  with committed and tentative values, the service's split distribution scalars and system metrics), also after a
  round trip through the google-cloud-dataflow client's message types (what `fetch_dataflow` receives).
- Committed counts are the source of truth: the tentative ones in the recorded job are inflated by a retried
  bundle and would break conservation; the report pushes the committed ones to a real Pushgateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import jobs, metrics, report
from beam_pipeline.options import OptionsError, ScoringOptions, check_options
from beam_pipeline.run import main, run
from servers import query
from test_pipeline import tiny_model, trained  # noqa: F401 - session fixtures
from test_pipeline_batch import inputs, job_argv  # noqa: F401 - the batch inputs: synthetic + bad records

DATA = Path(__file__).resolve().parent / "data" / "dataflow"


def _recorded(tmp_path: Path, model: str, name: str | None = None) -> tuple[Path, Path]:
    """The recorded Job and JobMetrics, the job's --model pointed at a local checkpoint (its names: neg/neu/pos and
    a/b/c, as the recorded metrics), and renamed to `name` if given (a job of its own on a shared server)."""
    job = json.loads((DATA / "job-batch.json").read_text())
    job["environment"]["sdkPipelineOptions"]["options"]["model"] = model
    if name:
        job["name"] = name
    (tmp_path / "job.json").write_text(json.dumps(job))
    return tmp_path / "job.json", DATA / "metrics-batch.json"


def test_report_on_a_local_run_gives_the_counts_of_the_jobs_own_summary(inputs, tmp_path, capsys):  # noqa: F811
    summary = run(job_argv(inputs, tmp_path, "--summary_json", str(tmp_path / "job-summary.json")))
    assert summary.conserved and summary.job_id.startswith("local-") and summary.records_in == inputs["records"]
    capsys.readouterr()
    assert main(["report", "--job", summary.job_id, "--summary_json", str(tmp_path / "report.json")]) == 0
    assert f"records in      {summary.records_in}" in capsys.readouterr().out
    own, reported = (json.loads((tmp_path / name).read_text()) for name in ("job-summary.json", "report.json"))
    for key in ("state", "records_in", "predictions", "dead_letters", "dead_letters_by_reason", "predictions_by_label",
                "key_missing_by_modality", "missing_by_modality", "ensemble_used", "model_version", "outputs",
                "job_id", "job_name", "conserved"):
        assert reported[key] == own[key], key
    assert reported["dead_letters"] > 0 and reported["predictions"] > 0


def test_the_recorded_dataflow_job_is_summarised_from_its_committed_metrics(tiny_model, tmp_path, capsys):  # noqa: F811
    job_json, metrics_json = _recorded(tmp_path, tiny_model)
    status = main(["report", "--job_json", str(job_json), "--metrics_json", str(metrics_json),
                   "--summary_json", str(tmp_path / "summary.json")])
    assert status == 0, capsys.readouterr()
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["records_in"], s["predictions"], s["dead_letters"], s["conserved"]) == (1000, 990, 10, True)
    assert s["dead_letters_by_reason"] == {"non_finite": 4, "too_long": 6}
    assert s["predictions_by_label"] == {"neg": 500, "neu": 0, "pos": 490}  # neu never counted: 0 from the model
    assert s["missing_by_modality"] == {"a": 101, "b": 0, "c": 97} and s["key_missing_by_modality"]["c"] == 12
    assert (s["state"], s["job_name"], s["job_id"]) == ("DONE", "emmr-score-daily",
                                                         "2026-07-20_03_00_12-10263418822939460123")
    assert s["seconds"] == pytest.approx(41 * 60 - 3.533, abs=0.01)  # createTime to currentStateTime
    assert s["outputs"]["predictions"] == "gs://emmr-example/predictions/dt=2026-07-20/part"
    assert s["attempted_only"] == []


def test_parsing_keeps_committed_and_attempted_and_skips_what_is_not_the_jobs():
    doc = json.loads((DATA / "metrics-batch.json").read_text())
    results = {(r.key.step, r.key.metric.name): r for r in jobs.parse_metrics(doc, metrics.NAMESPACE)}
    r = results[("s4", "emmr_input_records_total")]
    assert (r.committed, r.attempted) == (1000, 1024)
    d = results[("s10", "emmr_batch_size_records")]
    assert (d.committed.count, d.committed.sum, d.attempted.count) == (4, 990, 5)
    assert not any(name.endswith(("_COUNT", "_MEAN")) for _, name in results), "the UI's split view is skipped"
    assert not any(name in ("ElementCount", "MeanByteCount") for _, name in results), "system metrics are skipped"
    snap = metrics.Snapshot.from_results(jobs.parse_metrics(doc, metrics.NAMESPACE))
    assert snap.distributions["emmr_batch_size_records"] == (4, 990) and snap.attempted_only == []


def test_the_dataflow_clients_messages_parse_the_same():
    """fetch_dataflow receives google-cloud-dataflow-client messages and serialises them back to REST JSON."""
    from google.cloud import dataflow_v1beta3 as dataflow

    raw = (DATA / "metrics-batch.json").read_text()
    again = json.loads(dataflow.JobMetrics.to_json(dataflow.JobMetrics.from_json(raw), use_integers_for_enums=False))
    key = lambda r: (r.key.step, r.key.metric.name)  # noqa: E731
    assert sorted(map(key, jobs.parse_metrics(again))) == sorted(map(key, jobs.parse_metrics(json.loads(raw))))
    a = {key(r): (r.committed, r.attempted) for r in jobs.parse_metrics(again)}
    b = {key(r): (r.committed, r.attempted) for r in jobs.parse_metrics(json.loads(raw))}
    assert a == b
    job_raw = (DATA / "job-batch.json").read_text()
    job = jobs.parse_job(json.loads(dataflow.Job.to_json(dataflow.Job.from_json(job_raw, ignore_unknown_fields=True),
                                                         use_integers_for_enums=False)))
    assert (job.state, job.kind, job.terminal, job.options["device"]) == ("DONE", "batch", True, "cuda")


def test_a_running_job_reports_its_counts_so_far_and_pushes_nothing(tiny_model, tmp_path, capsys):  # noqa: F811
    job_json, metrics_json = _recorded(tmp_path, tiny_model)
    job = json.loads(job_json.read_text())
    job["currentState"] = "JOB_STATE_RUNNING"
    job_json.write_text(json.dumps(job))
    assert main(["report", "--job_json", str(job_json), "--metrics_json", str(metrics_json),
                 "--pushgateway", "127.0.0.1:9", "--summary_json", str(tmp_path / "s.json")]) == report.EXIT_RUNNING
    assert "records in      1000" in capsys.readouterr().out and not (tmp_path / "s.json").exists()


def test_counts_the_runner_did_not_commit_are_reported_as_attempted(tiny_model):  # noqa: F811
    doc = {"metrics": [{"name": {"origin": "user", "name": "emmr_input_records_total",
                                 "context": {"namespace": "emmr", "step": "s2", "tentative": "true"}}, "scalar": "7"}]}
    summary, _ = report.summarize(jobs.parse_metrics(doc), jobs.JobInfo("j", "n", "DONE", None, None),
                                  report.ModelFacts.read(tiny_model))
    assert summary.records_in == 7 and summary.attempted_only == ["emmr_input_records_total"]
    assert "not committed" in summary.text()


def test_report_arguments_are_checked(tmp_path, caplog):
    assert main(["report"]) == report.EXIT_USAGE
    assert main(["report", "--job", "2026-07-20_03_00_12-1"]) == report.EXIT_USAGE  # a Dataflow id needs project
    assert "--project and --region" in caplog.text
    assert main(["report", "--job", "local-20260101T000000Z-000000"]) == report.EXIT_USAGE
    assert "no local run" in caplog.text
    assert main(["report", "--job_json", str(tmp_path / "absent.json"), "--metrics_json", "x"]) == report.EXIT_USAGE


def test_remote_runs_leave_the_summary_to_the_report():
    argv = ["--runner=DataflowRunner", "--input", "gs://b/in/*.parquet", "--model", "gs://b/m", "--output",
            "gs://b/out/p", "--dead_letter", "gs://b/out/d", "--pushgateway", "10.0.0.5:9091", "--summary_json",
            "gs://b/s.json"]
    with pytest.raises(OptionsError) as e:
        check_options(ScoringOptions(argv))
    assert sum("emmr-score report --job <id>" in p for p in e.value.problems) == 2


def test_the_console_script_runs_the_report(tiny_model, tmp_path):  # noqa: F811
    job_json, metrics_json = _recorded(tmp_path, tiny_model)
    out = subprocess.run([sys.executable, "-m", "beam_pipeline.run", "report", "--job_json", str(job_json),
                          "--metrics_json", str(metrics_json)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "records in      1000  (= 990 predictions + 10 dead letters: conserved)" in out.stdout


@pytest.mark.integration
def test_the_report_pushes_committed_counts_to_the_pushgateway(prometheus, tiny_model, tmp_path):  # noqa: F811
    name = f"emmr-report-{tmp_path.name[-12:]}".replace("_", "-")
    job_json, metrics_json = _recorded(tmp_path, tiny_model, name)
    assert main(["report", "--job_json", str(job_json), "--metrics_json", str(metrics_json),
                 "--pushgateway", prometheus.pushgateway.address]) == 0

    def value(promql: str) -> float:
        result = query(prometheus.url, promql, timeout=60)
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    sel = f'job="{name}"'
    assert value(f"emmr_input_records_total{{{sel}}}") == 1000  # committed (1024 attempted)
    assert value(f"sum(emmr_records_total{{{sel}}})") == 1000
    assert value(f'emmr_predictions_total{{{sel},label="neu"}}') == 0
    assert value(f'emmr_model_info{{{sel},device="cuda"}}') == 1
    assert value(f"emmr_batch_size_records_count{{{sel}}}") == 4
    assert value(f"emmr_job_duration_seconds{{{sel}}}") == pytest.approx(2456.467, abs=0.01)


def test_a_failed_job_is_reported_and_pushes_nothing(tiny_model, tmp_path, caplog, capsys):  # noqa: F811
    """The push replaces the job's group: a failed run must not erase the last success time the alerts watch."""
    job_json, metrics_json = _recorded(tmp_path, tiny_model)
    job = json.loads(job_json.read_text())
    job["currentState"] = "JOB_STATE_FAILED"
    job_json.write_text(json.dumps(job))
    status = main(["report", "--job_json", str(job_json), "--metrics_json", str(metrics_json),
                   "--pushgateway", "127.0.0.1:9", "--summary_json", str(tmp_path / "s.json")])
    assert status == report.EXIT_FAILED and "nothing pushed" in caplog.text
    assert json.loads((tmp_path / "s.json").read_text())["state"] == "FAILED"
