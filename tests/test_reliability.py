"""Faults, restarts and security of the scoring job (issue #7); the bad-input corpus is tests/test_bad_inputs.py.

- A missing, corrupt, replaced or oversized model fails the job at start (exit 2) with a message naming the file.
- An exception inside inference routes the records it concerns to dead letters, never drops them; a failure that
  goes away on smaller batches is retried (bisection) and scores everything.
- A streaming job killed mid-stream and started again on the same subscription scores every message at least once
  (the real Pub/Sub emulator redelivers what was not acknowledged); outputs carry ids for removing duplicates.
- Checkpoints never unpickle; sizes are bounded (Parquet read in slices, oversized row groups not read, messages and
  checkpoint files limited); /metrics binds where told; no credentials in the repository or in the job's logs.
- The deploy engineer's fixes: --share_model true/false, emmr_model_info at model load, /metrics at worker start.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline as beam_testing
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import acks, metrics
from beam_pipeline import pipeline as pipeline_module
from beam_pipeline.handler import EMMRModelHandler, LoadedModel
from beam_pipeline.options import ScoringOptions, check_options
from beam_pipeline.pipeline import build_pipeline, prepare
from beam_pipeline.run import main, run
from beam_pipeline.sources import row_group_chunks
from emmr import checkpoint
from emmr.scorer import Scores
from schemas.message import encode_record
from servers import free_port, http_get
from test_bad_inputs import record, table
from test_pipeline import tiny_model  # noqa: F401 - the session fixture: a model with hand-set weights

ROOT = Path(__file__).resolve().parent.parent
RUNNER = "--runner=DirectRunner"


def batch_argv(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return [RUNNER, "--input", str(data / "*.parquet"), "--model", model, "--output", str(out / "predictions"),
            "--dead_letter", str(out / "dead"), "--batch_size", "4", *extra]


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(table([record(f"ok-{i}") for i in range(6)]), folder / "part-0.parquet")
    return folder


# ------------------------------------------------------------------------------------------- the model at start


def _copy(model: str, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_in_place_of_weights(ckpt: Path, marker: Path, rehash: bool) -> None:
    import pickle

    (ckpt / checkpoint.MODEL_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    if rehash:  # an attacker who can also rewrite checkpoint.json: the hash matches, the file is still never unpickled
        meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
        meta["files"][checkpoint.MODEL_FILE] = hashlib.sha256((ckpt / checkpoint.MODEL_FILE).read_bytes()).hexdigest()
        (ckpt / checkpoint.META_FILE).write_text(json.dumps(meta))


MODEL_FAULTS = {
    "no_directory": (lambda ckpt, marker: shutil.rmtree(ckpt), "checkpoint.json"),
    "no_checkpoint_json": (lambda ckpt, marker: (ckpt / checkpoint.META_FILE).unlink(), "checkpoint.json"),
    "checkpoint_json_not_json": (lambda ckpt, marker: (ckpt / checkpoint.META_FILE).write_text("{not json"),
                                 "not valid JSON"),
    "checkpoint_json_too_large": (lambda ckpt, marker: (ckpt / checkpoint.META_FILE).write_text(" " * (2 << 20)),
                                  "larger than the limit"),
    "other_format_version": (
        lambda ckpt, marker: (ckpt / checkpoint.META_FILE).write_text(
            (ckpt / checkpoint.META_FILE).read_text().replace('"format_version": 2', '"format_version": 1')),
        "checkpoint format 1"),
    "no_weights": (lambda ckpt, marker: (ckpt / checkpoint.MODEL_FILE).unlink(), "model.safetensors"),
    "weights_bit_flipped": (lambda ckpt, marker: _flip_a_byte(ckpt / checkpoint.MODEL_FILE), "does not match"),
    "weights_truncated": (
        lambda ckpt, marker: (ckpt / checkpoint.MODEL_FILE).write_bytes((ckpt / checkpoint.MODEL_FILE).read_bytes()[:100]),
        "does not match"),
    "weights_replaced_by_a_pickle": (lambda ckpt, marker: _pickle_in_place_of_weights(ckpt, marker, False),
                                     "does not match"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_a_bad_model_fails_the_job_at_start_with_a_clear_message(fault, tiny_model, data, tmp_path, caplog):  # noqa: F811
    ckpt, marker = _copy(tiny_model, tmp_path / "model"), tmp_path / "unpickled"
    damage, says = MODEL_FAULTS[fault]
    damage(ckpt, marker)
    assert main(batch_argv(str(ckpt), data, tmp_path / "out")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("--model" in e and says in e for e in errors), errors
    assert not (tmp_path / "out").exists() and not marker.exists()


def test_a_pickle_with_a_matching_recorded_hash_is_still_never_unpickled(tiny_model, data, tmp_path):  # noqa: F811
    ckpt, marker = _copy(tiny_model, tmp_path / "model"), tmp_path / "unpickled"
    _pickle_in_place_of_weights(ckpt, marker, rehash=True)
    prepare(ScoringOptions(batch_argv(str(ckpt), data, tmp_path / "out")))  # the launch check passes: hashes match
    with pytest.raises(checkpoint.CheckpointError, match="not a readable safetensors file"):
        EMMRModelHandler(str(ckpt)).load_model()  # the worker's load parses safetensors, never pickle
    summary = None
    try:
        summary = run(batch_argv(str(ckpt), data, tmp_path / "out"))
    except Exception as e:  # noqa: BLE001 - the job fails at the worker's model load, saying why
        assert "not a readable safetensors file" in str(e)
    assert summary is None and not marker.exists()


def test_a_model_corrupted_after_launch_fails_the_job_when_workers_load_it(tiny_model, data, tmp_path, caplog):  # noqa: F811
    ckpt = _copy(tiny_model, tmp_path / "model")
    argv = batch_argv(str(ckpt), data, tmp_path / "out")
    config, spec = prepare(ScoringOptions(argv))
    _flip_a_byte(ckpt / checkpoint.MODEL_FILE)
    with pytest.raises(Exception, match="does not match the recorded"):
        with beam_testing.TestPipeline(options=PipelineOptions([RUNNER])) as p:
            build_pipeline(p, config, spec)
    assert main(argv) == 2  # and a new launch refuses it at once


# ------------------------------------------------------------------------------------------- faults in inference


class FaultyModel(LoadedModel):
    """The real tiny model, with faults by record id: `raise-*` always raises (a record the model cannot take);
    `flaky-*` raises in any batch of more than one record (e.g. out of memory on big batches); `nan-*` comes back
    with NaN probabilities; `short-*` makes the model return one row too few; `gpu-*` fails like a broken CUDA
    context (infrastructure: the bundle fails)."""

    calls = 0

    def score(self, records):
        FaultyModel.calls += 1
        ids = [str(i) for i in records.ids]
        if any(i.startswith("gpu-") for i in ids):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        if any(i.startswith("raise-") for i in ids):
            raise RuntimeError("index 9 is out of bounds for dimension 0 with size 3 (injected)")
        if len(ids) > 1 and any(i.startswith("flaky-") for i in ids):
            raise RuntimeError("CUDA out of memory (injected)")
        s = super().score(records)
        if any(i.startswith("short-") for i in ids):
            return Scores(**{k: v[:-1] for k, v in vars(s).items()})
        for j, i in enumerate(ids):
            if i.startswith("nan-"):
                s.probabilities[j] = np.nan
        return s


class FaultyHandler(EMMRModelHandler):
    def load_model(self):
        loaded = super().load_model()
        return FaultyModel(loaded._scorer, "cpu")


def _faulty_run(model: str, tmp_path: Path, ids: list[str], handler_class, check_predictions, check_dead) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(table([record(i) for i in ids]), folder / "part.parquet")
    config, spec = prepare(ScoringOptions(batch_argv(model, folder, tmp_path / "out")))
    with beam_testing.TestPipeline(options=PipelineOptions([RUNNER])) as p:
        out = build_pipeline(p, config, spec, handler=handler_class(spec.path, batch_size=config.batch_size))
        assert_that(out.predictions, lambda t: check_predictions(pa.concat_tables(t).column("id").to_pylist()),
                    label="Predictions")
        assert_that(out.dead_letters, lambda t: check_dead(pa.concat_tables(t).to_pylist()), label="DeadLetters")
        counts = ((out.predictions, out.dead_letters)
                  | beam.Flatten() | beam.Map(lambda t: t.num_rows) | beam.CombineGlobally(sum))
        assert_that(counts, equal_to([len(ids)]), label="Conservation")  # in = predictions + dead letters


def test_exceptions_in_inference_dead_letter_only_the_failing_records_and_retry_the_rest(tiny_model, tmp_path):  # noqa: F811
    ids = ["ok-1", "raise-1", "ok-2", "flaky-1", "nan-1", "ok-3", "flaky-2", "ok-4", "short-1", "ok-5", "ok-6"]
    failing = {"raise-1": "inference_error", "nan-1": "non_finite_output", "short-1": "inference_error"}

    def predictions(scored):  # retried in smaller batches, then scored: the flaky ones and their neighbours
        assert sorted(scored) == sorted(set(ids) - set(failing))

    def dead(letters):
        assert {d["id"]: d["error_kind"] for d in letters} == failing and len(letters) == len(failing)
        by_id = {d["id"]: d for d in letters}
        assert "injected" in by_id["raise-1"]["error"] and "returned 0 rows for 1 records" in by_id["short-1"]["error"]
        for d in letters:  # every dead letter carries its record, rebuilt, for a replay
            assert pa.ipc.open_stream(d["payload"]).read_all().column("id").to_pylist() == [d["id"]]

    _faulty_run(tiny_model, tmp_path, ids, FaultyHandler, predictions, dead)


class CrashingHandler(EMMRModelHandler):
    """Scoring raises outside the model call for a batch holding "crash-1", with an error records can cause:
    RunInference's exception output takes the whole batch (BatchFailed)."""

    def score_elements(self, elements, model):
        if any("crash-1" in e.ids.tolist() for e in elements):
            raise ValueError("a padded shape does not match (injected)")
        return super().score_elements(elements, model)


def test_an_exception_out_of_run_inference_dead_letters_its_batch_and_nothing_is_lost(tiny_model, tmp_path,  # noqa: F811
                                                                                     monkeypatch):
    # Elements of --batch_size records (the job packs small records many to an element: decode.ELEMENT_BYTES), so
    # that the file makes several RunInference batches and only the one holding the crash is lost.
    monkeypatch.setattr(pipeline_module, "ELEMENT_BYTES", 0)
    ids = [f"ok-{i}" for i in range(5)] + ["crash-1"] + [f"ok-{i}" for i in range(5, 10)]

    def predictions(scored):
        assert "crash-1" not in scored and len(scored) >= len(ids) - 4  # at most its batch (4 records) fails

    def dead(letters):
        assert "crash-1" in {d["id"] for d in letters} and len(letters) <= 4
        assert all(d["error_kind"] == "inference_error" and "injected" in d["error"] for d in letters)

    _faulty_run(tiny_model, tmp_path, ids, CrashingHandler, predictions, dead)


@pytest.mark.parametrize("where", ["model", "handler"])
def test_an_infrastructure_fault_fails_the_job_instead_of_dead_lettering_its_input(tiny_model, tmp_path, where):  # noqa: F811
    """A broken CUDA context (in the model call, or host memory outside it) fails the bundle: Dataflow retries it;
    the DirectRunner, which does not retry, fails the job. No record becomes a dead letter for it."""

    class HostOutOfMemory(EMMRModelHandler):
        def score_elements(self, elements, model):
            if any("gpu-1" in e.ids.tolist() for e in elements):
                raise MemoryError("host out of memory (injected)")
            return super().score_elements(elements, model)

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(table([record(i) for i in ["ok-1", "gpu-1", "ok-2"]]), folder / "part.parquet")
    config, spec = prepare(ScoringOptions(batch_argv(tiny_model, folder, tmp_path / "out")))
    handler = (FaultyHandler if where == "model" else HostOutOfMemory)(spec.path, batch_size=config.batch_size)
    with pytest.raises(Exception, match="injected") as raised:
        with beam_testing.TestPipeline(options=PipelineOptions([RUNNER])) as p:
            build_pipeline(p, config, spec, handler=handler)
    assert ("illegal memory access" if where == "model" else "host out of memory") in str(raised.value)
    assert not list(tmp_path.glob("out/dead*"))  # nothing was dead-lettered


def test_a_failed_job_exits_1_saying_why(tiny_model, data, tmp_path, caplog, monkeypatch):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError("worker lost (injected)")

    monkeypatch.setattr(EMMRModelHandler, "load_model", broken)
    assert main(batch_argv(tiny_model, data, tmp_path / "out")) == 1
    assert any("the job failed" in r.getMessage() and "injected" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- stop and restart


def _metric(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _pull_ids(subscription: str, client) -> list[str]:
    try:
        response = client.pull(subscription=subscription, max_messages=100, timeout=3)
    except Exception:  # noqa: BLE001 - nothing within the timeout
        return []
    if response.received_messages:
        client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    return [json.loads(m.message.data)["id"] for m in response.received_messages]


@pytest.mark.slow
@pytest.mark.integration
def test_a_streaming_job_killed_mid_stream_and_restarted_scores_every_message(pubsub_emulator, tiny_model, tmp_path):  # noqa: F811
    """Wave 1 is scored by job 1. Wave 2 is pulled and decoded by job 1 (its /metrics says so) but still waits in
    the batching stage when job 1 is killed (SIGKILL): Beam's DirectRunner would already have acknowledged it and
    lost it; here it was never acknowledged, so the emulator redelivers it (ack deadline 10 s) to job 2."""
    em, tag = pubsub_emulator, uuid.uuid4().hex[:8]
    topic, out_topic, dead_topic = f"restart-in-{tag}", f"restart-out-{tag}", f"restart-dead-{tag}"
    sub = em.create_subscription(f"restart-in-sub-{tag}", topic, ack_deadline_s=10)
    out_sub = em.create_subscription(f"restart-out-sub-{tag}", out_topic)
    em.create_topic(dead_topic)
    client = acks.subscriber_client()
    wave1, wave2 = [f"w1-{i:02d}" for i in range(12)], [f"w2-{i:02d}" for i in range(12)]
    seen: list[str] = []

    def start(name: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "beam_pipeline.run", RUNNER, "--streaming", "--input_subscription", sub,
             "--output_topic", em.topic_path(out_topic), "--dead_letter", em.topic_path(dead_topic),
             "--model", tiny_model, "--batch_size", "1000", "--batch_duration_s", "6", "--metrics_port", str(port),
             "--metrics_addr", "127.0.0.1"], env={**os.environ, **em.env}, stdout=log, stderr=subprocess.STDOUT)
        return proc, port

    def scrape(port: int) -> str:
        return http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1].decode()

    def publish(ids):
        for rid in ids:
            payload, attributes = encode_record(table([record(rid)]).to_batches()[0])
            em.publish(topic, payload, **attributes)

    job1, port1 = start("job1")
    job2 = None
    try:
        publish(wave1)
        deadline = time.monotonic() + 120
        while len(set(seen)) < len(wave1) and time.monotonic() < deadline:
            assert job1.poll() is None, (tmp_path / "job1.log").read_text()[-3000:]
            seen += _pull_ids(out_sub, client)
        assert sorted(set(seen)) == wave1
        publish(wave2)
        text = ""
        while time.monotonic() < deadline:  # wave 2 pulled and decoded, none of it scored yet
            text = scrape(port1)
            if _metric(text, "emmr_input_records_total") == len(wave1) + len(wave2):
                break
            time.sleep(0.1)
        predicted = _metric(text, 'emmr_records_total{outcome="predicted"}')
        assert predicted == len(wave1), f"wave 2 was scored before the kill ({predicted}); the test proves nothing"
        job1.send_signal(signal.SIGKILL)
        job1.wait(30)
        time.sleep(1.0)
        seen += _pull_ids(out_sub, client)
        assert not set(wave2) & set(seen), "job 1 wrote wave 2 after all"

        job2, _ = start("job2")
        deadline = time.monotonic() + 120
        while not set(wave2) <= set(seen) and time.monotonic() < deadline:
            assert job2.poll() is None, (tmp_path / "job2.log").read_text()[-3000:]
            seen += _pull_ids(out_sub, client)
    finally:
        for proc in (job1, job2):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
    assert set(seen) == set(wave1) | set(wave2), sorted(set(wave1) | set(wave2) - set(seen))  # at least once
    assert sorted(set(seen)) == sorted(wave1 + wave2)  # duplicates, if any, share the record id: removable


def test_acknowledgements_wait_for_every_output_of_a_message():
    class Client:
        acked: list = []

        def acknowledge(self, subscription, ack_ids):
            Client.acked += ack_ids

    leases = acks.Leases("projects/p/subscriptions/s", client=Client())
    leases._held.update({"m1": acks._Held(["a1"], 0.0), "m2": acks._Held(["a2", "a2-redelivered"], 0.0)})
    assert leases.done(["m1", "m2"], needed=2) == 0 and Client.acked == []  # one output of two written
    assert leases.done(["m2"], needed=2) == 2 and Client.acked == ["a2", "a2-redelivered"]
    assert leases.done(["m2", "unknown"], needed=1) == 0 and leases.in_flight() == 1  # a duplicate output: ignored
    assert acks.message_ids(["pubsub:7", "file.parquet#row=1", "pubsub:8"]) == ["7", "8"]
    t = acks.with_sources(pa.table({"id": ["a", "b"]}), ["pubsub:1", "pubsub:2"])
    assert acks.sources_of(t) == ["pubsub:1", "pubsub:2"] and acks.sources_of(pa.table({"source": ["pubsub:3"]})) == ["pubsub:3"]


# ------------------------------------------------------------------------------------------- bounds


def test_a_large_row_group_is_read_in_bounded_slices(tmp_path):
    rows = 300
    pq.write_table(table([record(f"r{i}") for i in range(rows)]), tmp_path / "one-group.parquet", row_group_size=rows)
    pf = pq.ParquetFile(tmp_path / "one-group.parquet")
    assert pf.num_row_groups == 1
    per_row = sum(pf.metadata.row_group(0).column(j).total_uncompressed_size for j in range(pf.metadata.num_columns)) / rows
    chunks = list(row_group_chunks(pf, "f", 0, 1000, None, max_row_bytes=1 << 20, read_bytes=int(per_row * 64)))
    assert len(chunks) > 3 and all(c.table is not None and c.table.num_rows <= 64 for c in chunks)
    assert [c.first_row for c in chunks] == list(np.cumsum([1000] + [c.table.num_rows for c in chunks[:-1]]))
    assert sum((c.table.column("id").to_pylist() for c in chunks), []) == [f"r{i}" for i in range(rows)]


def test_reading_a_row_group_in_slices_bounds_memory(tmp_path):
    """A row group of 120 MB: read whole (pyarrow's read_row_group) it needs more than that; read as the job reads
    it, in slices of 8 MB through a buffered stream, far less. Each read in its own process (the Arrow memory
    pool's peak is per process)."""
    n, dim = 4000, 7500
    typ = pa.list_(pa.field("element", pa.list_(pa.field("element", pa.float32(), nullable=False), dim), nullable=False))
    values = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * dim, np.float32)), type=typ.value_type)
    column = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), values, type=typ)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "v": column}), path, row_group_size=n, compression="none")
    del values, column
    reads = {
        "whole": "t = pq.ParquetFile(path).read_row_group(0); rows = t.num_rows",
        "sliced": "from beam_pipeline.sources import READ_BUFFER_BYTES, row_group_chunks\n"
                  "pf = pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES)\n"
                  "rows = sum(c.table.num_rows for c in row_group_chunks(pf, path, 0, 0, None, 1 << 30, 8 << 20))",
    }
    peaks = {}
    for name, read in reads.items():
        script = f"import pyarrow as pa, pyarrow.parquet as pq\npath = {str(path)!r}\n{read}\n" \
                 "print(rows, pa.default_memory_pool().max_memory())"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        rows, peaks[name] = (int(x) for x in out.stdout.split())
        assert rows == n
    assert peaks["whole"] > 120_000_000 and peaks["sliced"] < 40 << 20, peaks


def test_checkpoint_and_message_limits_are_enforced():
    from schemas.arrow import MAX_PAYLOAD_BYTES
    from schemas.message import MAX_MESSAGE_BYTES

    assert checkpoint.MAX_META_BYTES == 1 << 20 and checkpoint.MAX_WEIGHTS_BYTES == 2 << 30
    assert MAX_MESSAGE_BYTES == MAX_PAYLOAD_BYTES == 4 << 20  # a dead letter holds a whole message


# ------------------------------------------------------------------------------------------- security


SERVING_CODE = [*sorted((ROOT / "beam_pipeline").glob("*.py")), *sorted((ROOT / "schemas").glob("*.py")),
                ROOT / "emmr" / "checkpoint.py", ROOT / "emmr" / "scorer.py", ROOT / "emmr" / "batch.py"]
UNSAFE_CALLS = {"pickle.load", "pickle.loads", "torch.load", "marshal.loads", "dill.load", "dill.loads",
                "cloudpickle.load", "cloudpickle.loads", "joblib.load", "yaml.load", "yaml.unsafe_load",
                "numpy.load", "np.load", "eval", "exec", "shelve.open"}


def _call_names(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            parts = []
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                yield ".".join([f.id, *reversed(parts)]), node


@pytest.mark.parametrize("path", SERVING_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_serving_code_never_deserialises_code(path):
    """What the job reads (checkpoints, Parquet, messages) goes through safetensors, JSON and Arrow only."""
    found = [(name, node.lineno) for name, node in _call_names(ast.parse(path.read_text())) if name in UNSAFE_CALLS]
    assert found == []


CREDENTIAL_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----"),
    "service account key": re.compile(r'"type"\s*:\s*"service_account"'),
    "Google API key": re.compile(r"AIza[0-9A-Za-z_\-]{35}"),
    "Google OAuth token": re.compile(r"ya29\.[0-9A-Za-z_\-]{20,}"),
    "AWS access key": re.compile(r"(AKIA|ASIA)[0-9A-Z]{16}"),
    "GitHub token": re.compile(r"gh[pousr]_[0-9A-Za-z]{36}"),
    "Slack token": re.compile(r"xox[abprs]-[0-9A-Za-z-]{10,}"),
    "password in a URL": re.compile(r"[a-z]+://[^/\s:@]+:[^/\s@]{6,}@(?!host)"),
}


def test_no_credentials_in_the_repository():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file() or path.stat().st_size > 5 << 20:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        found += [(str(path.relative_to(ROOT)), what) for what, pattern in CREDENTIAL_PATTERNS.items()
                  if pattern.search(text) and path.name != "test_reliability.py"]
    assert found == []


def test_no_credentials_in_the_jobs_logs(tiny_model, data, tmp_path):  # noqa: F811
    """A batch run (subprocess, its whole output captured) with credentials in its environment (Google ADC with a
    token, a secret variable) and in a Pushgateway URL: none of them appears in what it prints or logs."""
    token, secret, password = "ya29.sentinel-token-" + "x" * 20, "sentinel-secret-value", "sentinel-password"
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": secret,
                               "refresh_token": secret, "token": token, "token_uri": "http://127.0.0.1:9/"}))
    env = {**os.environ, "GOOGLE_APPLICATION_CREDENTIALS": str(adc), "EMMR_TEST_SECRET": secret,
           "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9"}
    argv = batch_argv(tiny_model, data, tmp_path / "out", "--pushgateway", f"http://emmr:{password}@127.0.0.1:9")
    out = subprocess.run([sys.executable, "-m", "beam_pipeline.run", *argv], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "could not push the job summary" in logs and "http://***@127.0.0.1:9" in logs  # redacted, yet says where
    for sentinel in (token, secret, password):
        assert sentinel not in logs


def test_the_metrics_endpoint_binds_the_address_it_is_given():
    script = textwrap.dedent("""
        import socket, sys
        from beam_pipeline import metrics
        port = metrics.serve(int(sys.argv[1]), "127.0.0.1")
        print(metrics._server["server"].server_address[0], port)
        other = None
        try:  # this machine's address on its default route, if it has one
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("10.254.254.254", 1))
            other = s.getsockname()[0]; s.close()
        except OSError:
            pass
        reachable = None
        if other and other != "127.0.0.1":
            try:
                socket.create_connection((other, port), timeout=2).close(); reachable = True
            except OSError:
                reachable = False
        print(reachable)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(free_port())], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    bound, reachable = out.stdout.split("\n")[0].split()[0], out.stdout.split("\n")[1]
    assert bound == "127.0.0.1" and reachable in ("False", "None")
    assert check_options(ScoringOptions(["--input_subscription", "projects/p/subscriptions/sub", "--output", "o",
                                         "--dead_letter", "d", "--model", "m", "--metrics_addr", "10.0.0.7"])
                         ).metrics_addr == "10.0.0.7"


# ------------------------------------------------------------------------------------------- deploy fixes


@pytest.mark.parametrize("flags, shared", [([], False), (["--share_model"], True), (["--share_model=true"], True),
                                           (["--share_model=false"], False), (["--share_model", "false"], False),
                                           (["--share_model=True"], True), (["--model_copies", "2"], True)])
def test_share_model_takes_true_or_false(flags, shared):
    base = ["--input", "i", "--output", "o", "--dead_letter", "d", "--model", "m"]
    assert check_options(ScoringOptions(base + flags)).share_model is shared
    with pytest.raises(SystemExit):
        ScoringOptions(base + ["--share_model=maybe"]).view_as(ScoringOptions).share_model  # noqa: B018
    restored = PipelineOptions.from_dictionary(ScoringOptions(base + flags).get_all_options(drop_default=True))
    assert bool(restored.view_as(ScoringOptions).share_model) is bool(
        ScoringOptions(base + flags).view_as(ScoringOptions).share_model)  # as Dataflow's workers re-read them


def test_model_info_is_recorded_when_the_model_loads(tiny_model):  # noqa: F811
    from prometheus_client import REGISTRY

    version = checkpoint.read_meta(tiny_model)["model_version"]
    labels = {"version": version, "device": "cpu", "requested_device": "cpu"}
    handler = EMMRModelHandler(tiny_model)
    handler.load_model()  # no batch scored yet
    assert REGISTRY.get_sample_value("emmr_model_info", labels) == 1.0
    assert REGISTRY.get_sample_value("emmr_model_load_seconds") > 0


def test_a_worker_serves_metrics_as_soon_as_the_sdk_harness_starts():
    """Beam's SDK harness imports --beam_plugins at start-up (sdk_worker_main.create_harness, run here as far as
    that, dry): the job's plugin serves /metrics there, before any element (subprocess: one server per process)."""
    from apache_beam.utils.plugin import BeamPlugin

    assert "beam_pipeline.worker.ServeMetricsAtWorkerStart" in BeamPlugin.get_all_plugin_paths()  # Dataflow passes it
    port = free_port()
    options = {"options": {"streaming": True, "metrics_port": port, "metrics_addr": "127.0.0.1",
                           "beam_plugins": ["beam_pipeline.worker.ServeMetricsAtWorkerStart"]}}
    script = textwrap.dedent(f"""
        import os, urllib.request
        from apache_beam.runners.worker import sdk_worker_main
        sdk_worker_main.create_harness(dict(os.environ), dry_run=True)
        print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    """)
    env = {**os.environ, "CONTROL_API_SERVICE_DESCRIPTOR": 'url: "127.0.0.1:1"', "PIPELINE_OPTIONS": json.dumps(options)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "emmr_input_records_total 0.0" in out.stdout


def test_the_direct_runner_pull_is_replaced_only_on_a_validated_beam_version():
    """beam_pipeline/direct_pubsub.py changes a private DirectRunner method: an unknown Beam version fails loudly
    instead of silently losing the at-least-once guarantee (docs/reliability.md says why there is no public way)."""
    import apache_beam

    from beam_pipeline import direct_pubsub

    direct_pubsub.check_beam_version()  # the installed one is validated
    assert apache_beam.__version__ in direct_pubsub.VALIDATED_BEAM
    with pytest.raises(RuntimeError, match="checked on Beam 2.77.0 only; this is Beam 2.78.0"):
        direct_pubsub.check_beam_version("2.78.0")
    direct_pubsub.install()
    direct_pubsub.install()  # idempotent
    from apache_beam.runners.direct import transform_evaluator

    assert transform_evaluator._PubSubReadEvaluator._read_from_pubsub.__module__ == "beam_pipeline.direct_pubsub"
