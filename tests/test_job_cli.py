"""`emmr-score` as a new user meets it (issue 15): a flag neither the job nor Beam knows is an error with a
suggestion (Beam alone drops it with a warning and runs with the default), a folder is a valid --input, and outputs
that cannot be written fail the launch in one message instead of a Beam traceback at the end."""

from __future__ import annotations

import logging
import os
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
