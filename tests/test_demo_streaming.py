"""Streaming, as a user first tries it (issue 15): `make demo-streaming` against the real Pub/Sub emulator prints
predictions, dead letters and /metrics as they arrive and stops cleanly on Ctrl-C; a streamed dead letter names
its record; building the streaming job warns about no non-deterministic key coder."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from beam_pipeline.decode import Decoder, decode_messages
from beam_pipeline.elements import Message
from emmr.config import preset
from schemas.message import encode_record
from test_pipeline import trained  # noqa: F401 - the session fixture: data and a model made by the emmr CLI

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo_streaming.py"


def one_message(**row) -> Message:
    config = preset("small")
    rng = np.random.default_rng(0)
    full = {"id": "r1", "label": 0, "event_time": None}
    for m in config.modalities:
        full[m.name] = rng.normal(size=(2, m.dim)).tolist()
    full.update(row)
    data, attributes = encode_record(pa.Table.from_pylist([full]).to_batches()[0])
    return Message(data=data, attributes=attributes, message_id="m-7", publish_time_us=0)


def test_a_streamed_dead_letter_names_its_record():
    config = preset("small")
    decoder = Decoder(config.modalities, config.num_classes, 8)
    _, letters = decode_messages([one_message(id=1)], decoder)  # an id of the wrong type: still readable as '1'
    assert [(d.id, d.error_kind) for d in letters] == [("1", "wrong_type")]
    assert letters[0].error.startswith("record '1' (message m-7), field 'id': wrong_type")
    _, letters = decode_messages([one_message(label=7)], decoder)
    assert letters[0].error.startswith("record 'r1' (message m-7), field 'label': label_out_of_range")


def test_building_the_streaming_job_warns_of_no_nondeterministic_key_coder(trained, caplog, monkeypatch):  # noqa: F811
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.pipeline import build_pipeline, prepare

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # nothing is contacted: the job is only built
    argv = ["--runner=DirectRunner", "--input_subscription=projects/emmr-local/subscriptions/in-sub",
            "--output_topic=projects/emmr-local/topics/out", "--dead_letter=projects/emmr-local/topics/dead",
            f"--model={trained['model']}"]
    caplog.set_level(logging.WARNING)
    config, spec = prepare(PipelineOptions(argv))
    build_pipeline(beam.Pipeline(options=PipelineOptions(argv)), config, spec)
    assert not [r for r in caplog.records if "deterministic" in r.getMessage()]


def test_make_demo_streaming_runs_the_demo():
    out = subprocess.run(["make", "-n", "demo-streaming", "DEMO_STREAMING_ARGS=--seconds 5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "scripts/install-test-deps.sh" in out.stdout
    assert re.search(r"python scripts/demo_streaming.py runs/demo-streaming --seconds 5$", out.stdout, re.M), out.stdout


@pytest.mark.integration
@pytest.mark.slow  # the emulator and a streaming job: about half a minute
def test_the_streaming_demo_shows_what_comes_out_and_stops_cleanly_on_ctrl_c(trained, tmp_path):  # noqa: F811
    from servers import pubsub_emulator_jar, require_binary, unavailable

    require_binary("java")
    if not pubsub_emulator_jar():
        unavailable("the Pub/Sub emulator jar (google-cloud-cli-pubsub-emulator) is not installed")
    proc = subprocess.Popen([sys.executable, str(DEMO), str(tmp_path / "demo"), "--model", trained["model"],
                             "--records", "20", "--rate", "50", "--seconds", "300", "--metrics-every", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    errors: list[str] = []  # read as it comes too: a full stderr pipe would block the demo (CI saw it hang)
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    err_reader = threading.Thread(target=lambda: errors.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    err_reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(re.search(r"so far: \d+ predictions \+ \d+ dead letters = 28 of 28", l) for l in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines) + "".join(errors)
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            status = proc.wait(90)
        except subprocess.TimeoutExpired:
            status = None  # reported below with everything it printed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    err_reader.join(10)
    text, err = "".join(lines), "".join(errors)
    assert status == 130, text + err
    assert "Traceback" not in text + err
    predictions = re.findall(r"^   prediction   (synth-2-\d+)", text, re.M)
    assert sorted(set(predictions)) == [f"synth-2-{i:08d}" for i in range(20)]
    dead = dict(re.findall(r"^   dead letter  (\S+) +(\w+)", text, re.M))
    assert dead["bad-nan"] == "non_finite" and dead["bad-too-long"] == "too_long"  # named by their ids
    assert re.search(r'^   /metrics  emmr_records_total\{outcome="predicted"\} \d+', text, re.M)
    assert "== interrupted" in text and "stopping the streaming job" in text and "stopping the Pub/Sub emulator" in text
    pids = [int(p) for p in re.findall(r"stopping .* \(pid (\d+)\)", text)]
    for pid in pids:  # every process the demo started has gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
