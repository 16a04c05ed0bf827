"""What a user meets at the command line (issue 15): errors they can fix are one line and exit 2, unknown flags
are named with a suggestion, an existing checkpoint is not overwritten without --force, and --help says what each
flag does and its default (and answers without loading Beam or torch for `emmr-score`)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import fields

import pytest

from emmr import synth
from emmr.cli import COMMANDS, main
from emmr.config import preset
from test_pipeline import trained  # noqa: F401 - the session fixture: data and a model made by the emmr CLI


@pytest.fixture(autouse=True)
def _logs(caplog):
    caplog.set_level(logging.INFO)


def run_cli(capsys, caplog, *argv: str) -> tuple[int, str]:
    """`emmr ARGV` in this process -> (exit status, everything it wrote to stderr and its log)."""
    caplog.clear()
    try:
        status = main(list(argv))
    except SystemExit as e:  # argparse
        status = e.code
    return status, capsys.readouterr().err + caplog.text


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "ERROR" in line or "error:" in line]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny-data")
    synth.write(synth.SynthParams(records=60, seed=4), preset("small").modalities, str(out))
    return str(out)


def _project_error_cases(tmp, trained, tiny_data):  # noqa: F811
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("train: [1")
    corrupt = tmp / "corrupt"
    shutil.copytree(trained["model"], corrupt)
    (corrupt / "checkpoint.json").write_text("{not json")
    afile = tmp / "afile"
    afile.write_text("")
    return {
        "evaluate-missing-checkpoint": (["evaluate", "--checkpoint", str(tmp / "nope"), "--data", tiny_data,
                                         "--out", str(tmp / "e")], "cannot read"),
        "evaluate-corrupt-checkpoint": (["evaluate", "--checkpoint", str(corrupt), "--data", tiny_data,
                                         "--out", str(tmp / "e")], "not valid JSON"),
        "evaluate-out-is-a-file": (["evaluate", "--checkpoint", trained["model"], "--data", tiny_data,
                                    "--out", str(afile / "e")], "is a file"),
        "train-bad-yaml": (["train", "--data", tiny_data, "--out", str(tmp / "t"), "--config", str(bad_yaml)],
                           "while parsing"),
        "train-no-data": (["train", "--data", str(tmp / "nowhere"), "--out", str(tmp / "t")], "no Parquet files"),
        "compare-bad-yaml": (["compare", "--train", tiny_data, "--test", tiny_data, "--out", str(tmp / "c"),
                              "--config", str(bad_yaml)], "while parsing"),
        "compare-bad-device": (["compare", "--train", tiny_data, "--test", tiny_data, "--out", str(tmp / "c"),
                                "--device", "gpu"], "expected cpu, cuda or cuda:N"),
        "synth-negative-records": (["synth", "--out", str(tmp / "s"), "--records", "-1"], "records must be positive"),
        "convert-no-source": (["convert", "mosi-utterance-csv", "--src", str(tmp / "nowhere"), "--out", str(tmp / "v")],
                              "nowhere"),
        "publish-no-data": (["publish", "--topic", "emmr-input", "--data", str(tmp / "nowhere")], "no Parquet files"),
    }


CASES = ["evaluate-missing-checkpoint", "evaluate-corrupt-checkpoint", "evaluate-out-is-a-file", "train-bad-yaml",
         "train-no-data", "compare-bad-yaml", "compare-bad-device", "synth-negative-records", "convert-no-source",
         "publish-no-data"]


@pytest.mark.parametrize("case", CASES)
def test_project_errors_are_one_line_and_exit_2(case, tmp_path, trained, tiny_data, capsys, caplog, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # publish: nothing is contacted, the data fail first
    argv, expected = _project_error_cases(tmp_path, trained, tiny_data)[case]
    status, err = run_cli(capsys, caplog, *argv)
    assert status == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err
    assert f"{argv[0]}: " in lines[0]  # names the command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_reports_a_project_error_in_one_line(command, monkeypatch, capsys, caplog):
    """Any subcommand, the one-line path: a checkpoint error raised from inside its run()."""
    import importlib

    from emmr.checkpoint import CheckpointError

    module = importlib.import_module(f"emmr.commands.{command}")

    def failing(args):
        raise CheckpointError("cannot read x/checkpoint.json: injected")

    monkeypatch.setattr(module, "run", failing)
    monkeypatch.setattr(module, "add_arguments", lambda p: None)  # no required flags to satisfy
    status, err = run_cli(capsys, caplog, command)
    assert status == 2 and "Traceback" not in err, err
    assert error_lines(err) == [l for l in err.splitlines() if f"{command}: cannot read x/checkpoint.json" in l]


def test_cuda_without_a_gpu_is_one_line_before_any_training(tmp_path, tiny_data, capsys, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    status, err = run_cli(capsys, caplog, "train", "--data", tiny_data, "--out", str(tmp_path / "t"), "--device", "cuda")
    assert status == 2 and "Traceback" not in err and "no CUDA device" in err, err
    assert "training" not in err and not (tmp_path / "t" / "checkpoint.json").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    import emmr.commands.synth as synth_command

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(synth_command, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["synth", "--out", "x", "--records", "1"])


def test_verbose_shows_the_traceback_of_a_project_error(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    status, err = run_cli(capsys, caplog, "-v", "synth", "--out", str(tmp_path), "--records", "-1")
    assert status == 2 and "Traceback" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "d", "--out", "o", "--pateince", "3"], "unknown flag --pateince (did you mean --patience?)"),
    (["evaluate", "--checkpont", "c", "--data", "d", "--out", "o"], "unknown flag --checkpont (did you mean --checkpoint?)"),
    (["synth", "--out", "o", "--records", "3", "--sed=2"], "unknown flag --sed (did you mean --seed?)"),
    (["publish", "--topic", "t", "--data", "d", "a.parquet"], "unexpected argument 'a.parquet'"),
])
def test_unknown_flags_are_rejected_with_a_suggestion(argv, message, capsys, caplog):
    status, err = run_cli(capsys, caplog, *argv)
    assert status == 2 and message in err, err
    assert f"usage: emmr {argv[0]}" in err


def test_train_refuses_to_overwrite_a_checkpoint_without_force(tmp_path, trained, tiny_data, capsys, caplog):  # noqa: F811
    out = tmp_path / "ckpt"
    shutil.copytree(trained["model"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["train", "--data", tiny_data, "--out", str(out), "--epochs", "1", "--teacher-epochs", "1", "--no-progress",
            "--missing-rate", "0.1"]
    status, err = run_cli(capsys, caplog, *argv)
    assert status == 2 and "holds a checkpoint already" in err and "--force" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    status, err = run_cli(capsys, caplog, *argv, "--force")
    assert status == 0, err
    assert json.loads((out / "checkpoint.json").read_text())["train"]["missing_rate"] == 0.1


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare unwrapped


def test_training_flags_say_what_they_do_and_their_defaults(capsys):
    from emmr.train import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for command, flags in (("train", ("epochs", "teacher_epochs", "batch_size", "lr", "seed", "missing_rate",
                                      "patience", "device")),
                           ("compare", ("epochs", "teacher_epochs", "batch_size", "lr", "missing_rate", "patience",
                                        "device"))):
        text = _help(capsys, command)
        for name in flags:
            flag = "--" + name.replace("_", "-")
            described = re.search(re.escape(flag) + r" [A-Z_]+ (.*?)\(default ([^,)]+)", text)
            assert described and len(described.group(1)) > 10, (command, flag)
            assert described.group(2) == str(defaults[name]), (command, flag)
        assert re.search(r"--preset \{[a-z,]+\} .*\(default: the preset that fits the data", text), command


def test_top_level_help_gives_whole_sentences(capsys):
    import importlib

    text = _help(capsys)
    for name in COMMANDS:
        paragraph = " ".join(importlib.import_module(f"emmr.commands.{name}").__doc__.split("\n\n")[0].split())
        sentence = paragraph[: paragraph.index(". ") + 1] if ". " in paragraph else paragraph
        assert sentence.endswith(".") and f" {name} {sentence} " in text, (name, sentence)


def test_compare_help_example_does_not_write_over_the_committed_docs(capsys):
    text = _help(capsys, "compare")
    assert re.search(r"--out (\S+)", text.split("Example")[1]).group(1).startswith("runs/")


def test_emmr_score_help_loads_neither_beam_nor_torch():
    code = ("import sys; from beam_pipeline.run import main; status = main(['--help']); "
            "print('loaded:', [m for m in ('apache_beam', 'torch') if m in sys.modules], 'status:', status)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "loaded: [] status: 0" in out.stdout, out.stdout + out.stderr
    for flag in ("--input", "--model", "--output", "--dead_letter", "--batch_size", "--runner"):
        assert flag in out.stdout
