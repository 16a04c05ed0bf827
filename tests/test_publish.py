"""`emmr publish`: Parquet records -> Pub/Sub messages v1, against the real emulator, with conservation."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from emmr.batch import read_table
from emmr.publish import DEFAULT_PROJECT, RateLimiter, iter_records, publish, resolve_topic
from schemas import decode_message, validate_input
from schemas.message import ATTR_ID, ATTR_VERSION

EMMR = str(Path(sys.executable).parent / "emmr")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_publish(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EMMR, "publish", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------------- without a server


def test_resolve_topic(monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert resolve_topic("emmr-input") == f"projects/{DEFAULT_PROJECT}/topics/emmr-input"
    assert resolve_topic("emmr-input", "p-1") == "projects/p-1/topics/emmr-input"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    assert resolve_topic("emmr-input") == "projects/env-project/topics/emmr-input"
    assert resolve_topic("projects/p-2/topics/abc") == "projects/p-2/topics/abc"
    assert resolve_topic("projects/p-2/topics/abc", "p-2") == "projects/p-2/topics/abc"
    for bad in ("ab", "1abc", "goog-topic", "a/b/c", "projects/p/subscriptions/abc", "projects//topics/abc", "bad topic"):
        with pytest.raises(ValueError):
            resolve_topic(bad)
    with pytest.raises(ValueError, match="project"):
        resolve_topic("projects/p-2/topics/abc", "other")


def test_iter_records_streams_one_row_slices(synth_dir):
    table = read_table(synth_dir)
    rows = list(iter_records(synth_dir, batch_size=64))
    assert [r.num_rows for _, _, r in rows] == [1] * table.num_rows
    assert [r.column("id")[0].as_py() for _, _, r in rows] == table.column("id").to_pylist()
    assert [row for _, row, _ in rows] == list(range(table.num_rows))  # one file: rows in file order
    assert [r.column("id")[0].as_py() for _, _, r in iter_records(synth_dir, limit=5)] == table.column("id").to_pylist()[:5]


def test_rate_limiter_paces_calls():
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(21):
        limiter.wait()
    assert now[0] == pytest.approx(2.0)  # 21 calls at 10/s: the last one at t = 2 s
    RateLimiter(None).wait()  # unlimited: returns at once
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_publish_counts_unencodable_and_failed_records(synth_dir):
    """Nothing is dropped silently: with a fake client, every record is either published or counted and named."""

    class Future:
        def __init__(self, exc=None):
            self.exc = exc

        def exception(self):
            return self.exc

        def add_done_callback(self, fn):
            fn(self)

    class FakePublisher:
        def __init__(self):
            self.calls = 0

        def publish(self, topic, data, **attributes):
            self.calls += 1
            if self.calls % 7 == 0:
                raise ValueError("refused")
            return Future(RuntimeError("server said no") if self.calls % 5 == 0 else None)

    sizes = [len(encoded(r)) for _, _, r in iter_records(synth_dir, limit=50)]
    limit_bytes = sorted(sizes)[40]  # about 10 of the 50 records are over this size
    fake = FakePublisher()
    report = publish(synth_dir, "fake-topic", limit=50, create_topic=False, publisher=fake, max_message_bytes=limit_bytes)
    too_big = sum(s > limit_bytes for s in sizes)
    assert too_big > 0
    assert report.read == 50 and report.unencodable == too_big
    assert report.published + report.publish_failed == fake.calls == 50 - too_big
    assert report.published == sum(1 for c in range(1, fake.calls + 1) if c % 7 and c % 5)
    assert not report.ok and report.failed == 50 - report.published
    assert len(report.errors) == report.failed and all("#row=" in e for e in report.errors)


def encoded(record: pa.RecordBatch) -> bytes:
    from schemas import encode_record

    return encode_record(record)[0]


# ----------------------------------------------------------------------------------------- on the emulator


@pytest.mark.integration
def test_emmr_publish_conserves_records(pubsub_emulator, synth_dir, small_config):
    topic, sub = _name("emmr-input"), _name("emmr-input-sub")
    subscription = pubsub_emulator.create_subscription(sub, topic)  # BEFORE publishing: it sees every message
    result = run_publish("--topic", topic, "--project", pubsub_emulator.project, "--data", synth_dir,
                         env=pubsub_emulator.env)
    assert result.returncode == 0, result.stderr
    source = read_table(synth_dir)
    assert f"published {source.num_rows} of {source.num_rows} records" in result.stderr

    messages = pubsub_emulator.pull(subscription, expected=source.num_rows)
    assert len(messages) == source.num_rows
    batches = [decode_message(m.data, dict(m.attributes)) for m in messages]
    assert all(m.attributes[ATTR_ID] == b.column("id")[0].as_py() for m, b in zip(messages, batches))
    assert all(m.attributes[ATTR_VERSION] == "1" for m in messages)
    received = pa.Table.from_batches(batches)
    result = validate_input(received, small_config.modalities, small_config.num_classes)
    assert not result.errors and result.valid.all()
    # Conservation: the same ids, once each, and the same content.
    assert sorted(received.column("id").to_pylist()) == sorted(source.column("id").to_pylist())
    assert received.sort_by("id").equals(source.sort_by("id"))


@pytest.mark.integration
def test_emmr_publish_creates_topic_and_honours_limit_and_rate(pubsub_emulator, synth_dir):
    from google.api_core.exceptions import NotFound

    topic = _name("emmr-new")
    path = pubsub_emulator.topic_path(topic)
    with pytest.raises(NotFound):
        pubsub_emulator.publisher.get_topic(topic=path)
    result = run_publish("--topic", path, "--data", synth_dir, "--limit", "30", "--rate", "50", env=pubsub_emulator.env)
    assert result.returncode == 0, result.stderr
    assert pubsub_emulator.publisher.get_topic(topic=path).name == path  # created on the emulator
    assert "published 30 of 30 records" in result.stderr
    seconds = float(result.stderr.split(" records to ")[1].split(" in ")[1].split(" s ")[0])
    assert seconds >= 29 / 50 * 0.9  # 30 records at 50/s take at least 0.58 s


@pytest.mark.integration
def test_emmr_publish_reports_oversized_records(pubsub_emulator, synth_dir):
    topic, sub = _name("emmr-big"), _name("emmr-big-sub")
    subscription = pubsub_emulator.create_subscription(sub, topic)
    result = run_publish("--topic", topic, "--data", synth_dir, "--limit", "5", "--max-message-bytes", "100",
                         env=pubsub_emulator.env)
    assert result.returncode == 1
    ids = read_table(synth_dir).column("id").to_pylist()[:5]
    assert all(i in result.stderr for i in ids), result.stderr  # each refused record is named
    assert "published 0 of 5 records" in result.stderr and "5 could not be encoded" in result.stderr
    assert pubsub_emulator.pull(subscription, expected=0) == []


def test_emmr_publish_bad_arguments(tmp_path, caplog, monkeypatch):
    from emmr.cli import main

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")  # nothing is contacted: the arguments fail first
    assert main(["publish", "--topic", "emmr-input", "--data", str(tmp_path)]) == 2
    assert "no Parquet files" in caplog.text
    assert main(["publish", "--topic", "x", "--data", str(tmp_path)]) == 2
    assert "topic id 'x'" in caplog.text
    with pytest.raises(SystemExit):
        main(["publish", "--topic", "emmr-input", "--data", str(tmp_path), "--rate", "0"])
