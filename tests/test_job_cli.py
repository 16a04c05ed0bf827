"""`emmr-score` as a new user meets it (issue 15): a flag neither the job nor Beam knows is an error with a
suggestion (Beam alone drops it with a warning and runs with the default), a folder is a valid --input, and outputs
that cannot be written fail the launch in one message instead of a Beam traceback at the end."""

from __future__ import annotations

import logging
import os
import re
import uuid

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.options import OptionsError
from beam_pipeline.pipeline import prepare
from beam_pipeline.run import main
from test_pipeline import trained  # noqa: F401 - the session fixture: data and a model made by the emmr CLI

RUNNER = "--runner=DirectRunner"


def argv(trained, out, *extra: str, input: str | None = None) -> list[str]:  # noqa: F811
    return [RUNNER, "--input", input or os.path.join(trained["data"], "*.parquet"), "--model", trained["model"],
            "--output", f"{out}/predictions/part", "--dead_letter", f"{out}/dead_letters/part", *extra]


def problems(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.mark.parametrize("extra, message", [
    (["--batchsize", "10"], "unknown flag --batchsize (did you mean --batch_size?)"),
    (["--devcie=cuda"], "unknown flag --devcie (did you mean --device?)"),
    (["--runer", "DataflowRunner"], "unknown flag --runer (did you mean --runner?)"),
    (["--frobnicate"], "unknown flag --frobnicate"),
    (["more.parquet"], "unexpected argument 'more.parquet' (a glob the shell expanded? quote it)"),
    (["--batch_size", "ten"], "argument --batch_size: invalid int value: 'ten'"),
])
def test_flags_nobody_knows_are_errors_with_a_suggestion(extra, message, trained, tmp_path, caplog, capsys):  # noqa: F811
    assert main(argv(trained, tmp_path, *extra)) == 2
    assert message in problems(caplog)
    assert len(capsys.readouterr().err.splitlines()) < 10  # not Beam's 140-line usage
    assert not (tmp_path / "predictions").exists()  # nothing ran


def test_a_misspelled_input_flag_is_named(trained, tmp_path, caplog):  # noqa: F811
    args = argv(trained, tmp_path)
    args[args.index("--input")] = "--inptu"
    assert main(args) == 2
    assert "unknown flag --inptu (did you mean --input?)" in problems(caplog)


@pytest.mark.parametrize("form", ["folder", "folder/"])
def test_a_folder_is_an_input(form, trained, tmp_path, caplog):  # noqa: F811
    folder = trained["data"] + ("/" if form.endswith("/") else "")
    config, _ = prepare(PipelineOptions(argv(trained, tmp_path, input=folder)))
    assert config.input == os.path.join(trained["data"], "*.parquet")


@pytest.mark.slow  # one batch run on the DirectRunner (a few seconds)
def test_a_folder_input_scores_its_parquet_files(trained, tmp_path, caplog, capsys):  # noqa: F811
    assert main(argv(trained, tmp_path, input=trained["data"])) == 0
    assert "records in      300  (= 300 predictions + 0 dead letters" in capsys.readouterr().out
    assert not [p for p in os.listdir(tmp_path) if p.startswith("beam-temp")]


def test_an_empty_folder_says_no_file_matches(trained, tmp_path, caplog):  # noqa: F811
    (tmp_path / "empty").mkdir()
    assert main(argv(trained, tmp_path / "out", input=str(tmp_path / "empty"))) == 2
    assert f"--input '{tmp_path / 'empty'}/*.parquet': no file matches" in problems(caplog)


def test_outputs_that_cannot_be_written_fail_before_the_job_starts(trained, tmp_path, caplog, capsys):  # noqa: F811
    (tmp_path / "afile").write_text("in the way")
    args = [RUNNER, "--input", trained["data"], "--model", trained["model"], "--output", f"{tmp_path}/afile/pred",
            "--dead_letter", f"{tmp_path}/afile/dead/part", "--summary_json", str(tmp_path)]
    assert main(args) == 2
    text = problems(caplog)
    assert f"--output '{tmp_path}/afile/pred': '{tmp_path}/afile' is a file" in text
    assert f"--dead_letter '{tmp_path}/afile/dead/part': '{tmp_path}/afile' is a file" in text
    assert f"--summary_json '{tmp_path}' is a folder" in text
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # no beam-temp-* folders left behind


def test_an_unwritable_folder_fails_before_the_job_starts(trained, tmp_path, caplog):  # noqa: F811
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(argv(trained, locked)) == 2
    assert "cannot write there" in problems(caplog)


@pytest.mark.integration
def test_gcs_folders_and_missing_buckets(gcs_emulator, trained, tmp_path):  # noqa: F811
    from apache_beam.io.filesystems import FileSystems

    bucket = gcs_emulator.create_bucket(f"emmr-u15-{uuid.uuid4().hex[:8]}")
    root = f"gs://{bucket}"
    for f in trained["files"]:
        with open(f, "rb") as src, FileSystems.create(f"{root}/data/{os.path.basename(f)}") as dst:
            dst.write(src.read())
    for folder in (f"{root}/data", f"{root}/data/"):
        config, _ = prepare(PipelineOptions([RUNNER, "--input", folder, "--model", trained["model"],
                                             "--output", f"{root}/out/p", "--dead_letter", f"{root}/out/d"]))
        assert config.input == f"{root}/data/*.parquet"
    assert not FileSystems.match([f"{root}/out/*"])[0].metadata_list  # the write probes are gone
    missing = f"gs://emmr-no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(OptionsError) as e:
        prepare(PipelineOptions([RUNNER, "--input", f"{root}/data", "--model", trained["model"],
                                 "--output", f"{missing}/p", "--dead_letter", f"{root}/out/d"]))
    assert e.value.problems[0].startswith(f"--output '{missing}/p': cannot write there")


# ------------------------------------------------------------------------------- dead letters and the summary


@pytest.fixture(scope="module")
def wrong_preset_data(tmp_path_factory) -> str:
    """Records of the mosi preset: every one is a dead letter (wrong_dimension) for the small model."""
    from emmr import synth
    from emmr.config import preset

    out = tmp_path_factory.mktemp("wrong-preset")
    synth.write(synth.SynthParams(records=20, seed=9), preset("mosi").modalities, str(out))
    return str(out)


def test_a_run_whose_records_mostly_fail_exits_1_saying_why(trained, wrong_preset_data, tmp_path, caplog, capsys,
                                                             monkeypatch):  # noqa: F811
    monkeypatch.setenv("EMMR_JOBS_DIR", str(tmp_path / "jobs"))
    assert main(argv(trained, tmp_path, input=wrong_preset_data)) == 1
    out = capsys.readouterr().out
    reason = ("20 of 20 records (100.0%) are dead letters, more than --max_dead_letter_fraction 0.5: the run fails "
              "(most common: wrong_dimension 20)")
    assert f"FAILED:         {reason}" in out
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(reason), errors
    assert "model           None" not in out  # the model's version, though it never scored a record
    assert len(list((tmp_path / "dead_letters").glob("*.parquet"))) == 1  # the outputs are written all the same
    # `emmr-score report` on the recorded run: the same figure, the same verdict
    job_id = re.search(r"^job\s+\S+ \((local-[^)]+)\)", out, re.M).group(1)
    assert main(["report", "--job", job_id]) == 1


def test_the_limit_is_a_flag(trained, wrong_preset_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EMMR_JOBS_DIR", str(tmp_path / "jobs"))
    assert main(argv(trained, tmp_path, "--max_dead_letter_fraction", "1", input=wrong_preset_data)) == 0
    assert "WARNING:        20 of 20 records (100.0%) are dead letters, above 1%" in capsys.readouterr().out


@pytest.mark.parametrize("extra, problem", [
    (["--max_dead_letter_fraction", "1.5"], "--max_dead_letter_fraction must be in [0, 1], got 1.5"),
    (["--max_dead_letter_fraction", "0.1", "--streaming"], "--max_dead_letter_fraction is for batch jobs"),
])
def test_bad_limits_are_rejected(extra, problem, trained, tmp_path, caplog):  # noqa: F811
    assert main(argv(trained, tmp_path, *extra)) == 2
    assert problem in problems(caplog)


def test_the_alert_fires_at_the_limit_the_job_uses():
    import yaml

    from beam_pipeline.flags import DEFAULT_MAX_DEAD_LETTER_FRACTION

    rules = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "deploy", "prometheus", "alerts.yml")))
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "EmmrBatchDeadLettersOverLimit")
    assert float(rule["expr"].strip().rsplit(">", 1)[1]) == DEFAULT_MAX_DEAD_LETTER_FRACTION


def test_the_summary_lists_the_files_written(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    import json
    import time

    from beam_pipeline.samples import write_bad_records
    from emmr.config import preset

    monkeypatch.setenv("EMMR_JOBS_DIR", str(tmp_path / "jobs"))
    data = tmp_path / "data"
    data.mkdir()
    for f in trained["files"]:
        (data / os.path.basename(f)).write_bytes(open(f, "rb").read())
    small = preset("small")
    write_bad_records(str(data), small.modalities, small.num_classes)  # a few dead letters: above 1 %
    stale = tmp_path / "pred" / "part-00002-of-00003.parquet"  # an earlier run's file under the same prefix
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    status = main([RUNNER, "--input", str(data), "--model", trained["model"], "--output", f"{tmp_path}/pred",
                   "--dead_letter", f"{tmp_path}/dead_letters", "--summary_json", f"{tmp_path}/summary.json"])
    assert status == 0
    out = capsys.readouterr().out
    run_id = json.loads((tmp_path / "summary.json").read_text())["job_id"]  # the run's files carry its id
    predictions = f"{tmp_path}/pred/part-{run_id}-00000-of-00001.parquet"  # a folder: its part-*.parquet
    dead = f"{tmp_path}/dead_letters-{run_id}-00000-of-00001.parquet"  # a prefix
    assert f"predictions:    1 file: {predictions}\n" in out and os.path.exists(predictions)
    assert f"dead_letters:   1 file: {dead}\n" in out and os.path.exists(dead)
    assert re.search(r"^WARNING: +\d+ of 3\d\d records \([\d.]+%\) are dead letters, above 1%", out, re.M), out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["files"] == {"predictions": [predictions], "dead_letters": [dead]}
    assert summary["too_many_dead_letters"] is False and 0.01 < summary["dead_letter_fraction"] < 0.5
