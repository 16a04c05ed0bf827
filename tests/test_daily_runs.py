"""Daily batch runs that never overwrite each other (issue #13, part 7).

--run_date (default today, UTC) replaces {date} in the paths; every file of a run carries its run id; a
_SUCCESS marker, written last, lists the run's files; a failed run writes none; a backfill over a date range is
one command (deploy/launch.sh backfill), one job per day.
"""

from __future__ import annotations

import glob
import json
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.handler import EMMRModelHandler
from beam_pipeline.options import OptionsError, check_options
from beam_pipeline.run import main, run
from test_deploy import DEPLOY, LAUNCH_ENV, run_script
from test_pipeline import tiny_model  # noqa: F401 - session fixture: a model with hand-set weights
from test_reliability import data  # noqa: F401 - a folder with six valid records

RUNNER = "--runner=DirectRunner"


def argv(model, data_dir, out, *extra):
    return [RUNNER, "--input", f"{data_dir}/*.parquet", "--model", model, "--output", f"{out}/predictions/dt={{date}}/part",
            "--dead_letter", f"{out}/dead/dt={{date}}/part", "--batch_size", "4", *extra]


def test_run_date_fills_the_paths_and_defaults_to_today():
    base = ["--input", "in/dt={date}/*.parquet", "--output", "out/dt={date}/p", "--dead_letter", "dead/dt={date}/d",
            "--model", "m", "--summary_json", "s/{date}.json"]
    config = check_options(PipelineOptions([*base, "--run_date", "2026-07-20"]))
    assert (config.input, config.output, config.dead_letter, config.summary_json, config.run_date) == (
        "in/dt=2026-07-20/*.parquet", "out/dt=2026-07-20/p", "dead/dt=2026-07-20/d", "s/2026-07-20.json", "2026-07-20")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert check_options(PipelineOptions(base)).output == f"out/dt={today}/p"
    for bad in ("2026-13-01", "20260720", "yesterday"):
        with pytest.raises(OptionsError, match="--run_date"):
            check_options(PipelineOptions([*base, "--run_date", bad]))
    with pytest.raises(OptionsError, match="is for batch runs"):
        check_options(PipelineOptions(["--input_subscription", "projects/p/subscriptions/abc", "--output",
                                       "out/dt={date}/p", "--dead_letter", "projects/p/topics/dead", "--model", "m"]))


def test_a_rerun_of_a_day_writes_beside_the_first_and_success_names_its_files(tiny_model, data, tmp_path):  # noqa: F811
    first = run(argv(tiny_model, data, tmp_path, "--run_date", "2026-07-20"))
    second = run(argv(tiny_model, data, tmp_path, "--run_date", "2026-07-20"))
    assert first.job_id != second.job_id and first.conserved and second.conserved
    day = tmp_path / "predictions" / "dt=2026-07-20"
    names = sorted(p.name for p in day.glob("*.parquet"))
    assert len(names) == 2 and {n.split("-local-")[1].rsplit("-", 3)[0] for n in names} == {
        first.job_id.removeprefix("local-"), second.job_id.removeprefix("local-")}
    marker = json.loads((day / "_SUCCESS").read_text())
    assert marker["run_id"] == second.job_id and marker["run_date"] == "2026-07-20"
    assert all(second.job_id in f for f in marker["files"]) and len(marker["files"]) == 2  # predictions + dead letters
    assert json.loads((tmp_path / "dead" / "dt=2026-07-20" / "_SUCCESS").read_text()) == marker
    assert sum(pq.read_metadata(f).num_rows for f in marker["files"] if "/predictions/" in f) == second.predictions
    assert first.files["predictions"] == [str(day / n) for n in names if first.job_id in n]  # its own files only


def test_a_failed_run_writes_no_success_marker(tiny_model, data, tmp_path, monkeypatch):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError("worker lost (injected)")

    monkeypatch.setattr(EMMRModelHandler, "load_model", broken)
    assert main(argv(tiny_model, data, tmp_path, "--run_date", "2026-07-21")) == 1
    assert not glob.glob(f"{tmp_path}/**/_SUCCESS", recursive=True)


def test_a_backfill_is_one_command_one_job_per_day():
    env = {**LAUNCH_ENV, "INPUT": "gs://b/inbox/dt={date}/*.parquet", "OUTPUT": "gs://b/predictions/dt={date}/part"}
    out = run_script(DEPLOY / "launch.sh", "backfill", "2026-06-29", "2026-07-02", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    bodies = [json.loads(chunk.split("\n", 1)[1]) for chunk in out.stdout.split("POST ")[1:]]
    launches = [b["launchParameter"] for b in bodies]
    assert [p["parameters"]["run_date"] for p in launches] == ["2026-06-29", "2026-06-30", "2026-07-01", "2026-07-02"]
    assert [p["jobName"] for p in launches] == [f"emmr-score-backfill-{d}" for d in
                                                ("20260629", "20260630", "20260701", "20260702")]
    assert all(p["parameters"]["input"] == "gs://b/inbox/dt={date}/*.parquet" for p in launches)  # the job fills it
    bad = run_script(DEPLOY / "launch.sh", "backfill", "2026-07-02", "2026-06-29", "--dry-run", env=env)
    assert bad.returncode == 2 and "FROM" in bad.stderr
