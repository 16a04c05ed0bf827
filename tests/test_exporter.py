"""`emmr-score export`: a streaming job's committed Beam metrics served to Prometheus (issue #13, part 6).

The Dataflow API cannot be reached here: the exporter reads the recorded responses of tests/data/dataflow/ (the
documented REST format; their tentative counts are inflated by a retried bundle) and must serve the committed
ones, with every known series present, labelled with the job's name; a real Prometheus scrapes it. The local path
(a streaming run recording its counts in the local job store, the exporter serving them) runs in
tests/test_deploy_dashboard.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beam_pipeline.run import main
from servers import LOOPBACK, free_port, http_get, query
from test_job_report import _recorded
from test_pipeline import tiny_model  # noqa: F401 - session fixture

ROOT = Path(__file__).resolve().parent.parent


def _series(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(emmr_\S+) (\S+)$", text, re.MULTILINE)}


def test_the_exporter_serves_committed_counts_with_every_known_series(tiny_model, tmp_path, capsys):  # noqa: F811
    job_json, metrics_json = _recorded(tmp_path, tiny_model)
    assert main(["export", "--job_json", str(job_json), "--metrics_json", str(metrics_json), "--once"]) == 0
    s = _series(capsys.readouterr().out)
    job = 'job="emmr-score-daily"'
    assert s[f"emmr_input_records_total{{{job}}}"] == 1000  # committed (attempted: 1024)
    assert s[f'emmr_records_total{{{job},outcome="predicted"}}'] == 990
    assert s[f'emmr_predictions_total{{{job},label="neu"}}'] == 0  # known, never counted
    assert s[f"emmr_batch_size_records_count{{{job}}}"] == 4 and s[f"emmr_batch_size_records_sum{{{job}}}"] == 990
    assert s[f"emmr_exporter_attempted_only{{{job}}}"] == 0
    assert abs(s[f"emmr_exporter_last_poll_timestamp_seconds{{{job}}}"] - time.time()) < 60


def test_the_exporter_says_when_it_cannot_read_the_job(tmp_path, caplog):
    assert main(["export", "--job", "local-20260101T000000Z-000000", "--jobs_dir", str(tmp_path), "--once"]) == 2
    assert "cannot read the job's metrics" in caplog.text


@pytest.mark.integration
def test_prometheus_scrapes_the_exported_committed_counts(prometheus, tiny_model, tmp_path):  # noqa: F811
    name = f"emmr-export-{tmp_path.name[-10:]}".replace("_", "-")
    job_json, metrics_json = _recorded(tmp_path, tiny_model, name)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", "export", "--job_json", str(job_json),
                             "--metrics_json", str(metrics_json), "--port", str(port), "--addr", LOOPBACK,
                             "--poll_s", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while http_get(f"http://{LOOPBACK}:{port}/metrics", timeout=1)[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the exporter never served /metrics"
            time.sleep(0.3)
        prometheus.add_target(f"{LOOPBACK}:{port}", job="emmr-streaming-exporter", mode="streaming", work="committed")
        # without honor_labels here, the exported job label arrives as exported_job
        result = query(prometheus.url, f'emmr_input_records_total{{exported_job="{name}", work="committed"}}', timeout=60)
        assert float(result[0]["value"][1]) == 1000
        total = query(prometheus.url, f'sum(emmr_records_total{{exported_job="{name}"}})', timeout=30)
        assert float(total[0]["value"][1]) == 1000  # conserved: committed counts, not the retried attempts
    finally:
        proc.terminate()
        proc.wait(10)
