"""No long run is silent (issue 15): training, evaluation, `emmr publish` and in-process scoring report records/s,
as a tqdm bar on a terminal and as a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import os
import re

import pytest

from emmr import synth
from emmr.cli import main as emmr_main
from emmr.config import preset
from emmr.progress import Progress
from test_pipeline import trained  # noqa: F401 - the session fixture: data and a model made by the emmr CLI

RATE = re.compile(r"[\d,]+ records/s")


@pytest.fixture(autouse=True)
def _info(caplog):
    caplog.set_level(logging.INFO)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_off_a_terminal_a_line_every_interval_with_records_per_second(caplog):
    now = [0.0]
    meter = Progress("work", total=100, every_s=10, terminal=False, summary=True, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 3.0
        meter.update(10)
    meter.close()
    lines = [m for m in messages(caplog) if m.startswith("work:")]
    # updates at 3, 6, ..., 30 s: a line at 12, 24 s (every 10 s since the last), then the summary at close
    assert lines == ["work: 40 of 100 records (40 %), 3 records/s", "work: 80 of 100 records (80 %), 3 records/s",
                     "work: 100 of 100 records (100 %), 3 records/s in 30.0 s"]


def test_on_a_terminal_a_bar(capsys, caplog):
    with Progress("work", total=5, terminal=True) as meter:
        assert meter.bar is not None
        meter.update(5)
    assert "work" in capsys.readouterr().err and not [m for m in messages(caplog) if m.startswith("work")]


def test_disabled_is_silent(capsys, caplog):
    with Progress("work", total=5, terminal=False, every_s=0, summary=True, enabled=False) as meter:
        meter.update(5)
    assert not capsys.readouterr().err and not [m for m in messages(caplog) if m.startswith("work")]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny-progress")
    synth.write(synth.SynthParams(records=60, seed=4), preset("small").modalities, str(out))
    return str(out)


def test_training_reports_records_per_second(tiny_data, tmp_path, caplog):
    assert emmr_main(["train", "--data", tiny_data, "--out", str(tmp_path / "m"), "--epochs", "1",
                      "--teacher-epochs", "1"]) == 0
    epochs = [m for m in messages(caplog) if " epoch 1/1: loss " in m]
    # the teacher's, the backbone's (stage 1) and the ensemble stage's
    assert len(epochs) == 3 and all(RATE.search(m) for m in epochs), epochs


def test_evaluation_reports_records_per_second(trained, tiny_data, tmp_path, caplog):  # noqa: F811
    assert emmr_main(["evaluate", "--checkpoint", trained["model"], "--data", tiny_data, "--out", str(tmp_path / "e"),
                      "--seeds", "2", "--missing-rates", "0,0.5"]) == 0
    done = [m for m in messages(caplog) if m.startswith("evaluating 4 runs")]
    assert len(done) == 1 and "240 of 240 records (100 %)" in done[0] and RATE.search(done[0]), done


def test_publish_reports_records_per_second(trained, caplog):  # noqa: F811
    from emmr.publish import publish

    class Done:
        def exception(self):
            return None

        def add_done_callback(self, fn):
            fn(self)

    class FakePublisher:
        def publish(self, topic, data, **attributes):
            return Done()

    report = publish(trained["data"], "fake-topic", limit=50, create_topic=False, publisher=FakePublisher(),
                     progress_every_s=0)
    assert report.ok
    lines = [m for m in messages(caplog) if m.startswith("publishing to projects/emmr-local/topics/fake-topic:")]
    assert lines and lines[-1].startswith("publishing to projects/emmr-local/topics/fake-topic: 50 of 50 records")
    assert all(RATE.search(m) for m in lines)


def test_in_process_scoring_reports_progress_while_it_runs(caplog):
    import time

    from beam_pipeline import metrics
    from beam_pipeline.progress import JobProgress

    recorder = metrics.Recorder()
    recorder.count(metrics.RECORDS, 7, outcome=metrics.PREDICTED)  # an earlier run in this process: not counted
    with JobProgress(total=30, every_s=0, terminal=False):
        recorder.count(metrics.RECORDS, 10, outcome=metrics.PREDICTED)
        recorder.count(metrics.RECORDS, 2, outcome=metrics.DEAD_LETTER)
        deadline = time.monotonic() + 10
        while not any("scoring: 12 of 30" in m for m in messages(caplog)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the poller reads the counters every second
        recorder.count(metrics.RECORDS, 18, outcome=metrics.PREDICTED)
    lines = [m for m in messages(caplog) if m.startswith("scoring:")]
    assert any(m.startswith("scoring: 12 of 30 records (40 %)") for m in lines), lines
    assert lines[-1].startswith("scoring: 30 of 30 records (100 %)") and " in " in lines[-1]


def test_a_local_batch_run_says_how_far_it_got(trained, tmp_path, caplog, capsys):  # noqa: F811
    from beam_pipeline.run import main

    assert main(["--runner=DirectRunner", "--input", trained["data"], "--model", trained["model"],
                 "--output", f"{tmp_path}/p", "--dead_letter", f"{tmp_path}/d"]) == 0
    done = [m for m in messages(caplog) if m.startswith("scoring: 300 of 300 records (100 %)")]
    assert len(done) == 1 and RATE.search(done[0]), messages(caplog)
    assert os.listdir(tmp_path)
