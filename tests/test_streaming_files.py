"""Streaming Parquet output on the Pub/Sub emulator (issue #13, part 1): per event-time window, K files, each
message exactly once, and a restarted job adds no duplicate file.

One run of about 75 s: messages are published at a steady rate for 60 s; the job writes predictions and dead
letters to Parquet with --window_s 5 --file_shards 2. Half way, job 1 is killed (SIGKILL) just after it put a
window's files in place, and job 2 starts on the same subscription: what job 1 pulled but had not written comes
back to job 2 after the ack deadline (10 s). Then every message is in exactly one file (predictions by record
id, dead letters by message id), every file lies in the window its name says (publication time = scored_at -
latency_s), each (window, job, firing) has at most K files, numbered 0..n-1 of n, and every window with enough
data written by one firing has exactly K. File names carry the job id: job 2 never rewrites a file of job 1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.message import encode_record
from test_bad_inputs import record, table
from test_pipeline import tiny_model  # noqa: F401 - session fixture: a model with hand-set weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNNER = "--runner=DirectRunner"
K, WINDOW_S, PUBLISH_S, RATE = 2, 5, 60, 8  # shards, window, seconds of publishing, messages per second
NAME = re.compile(r"^(?P<kind>predictions|dead)-(?P<start>\d{8}T\d{6}Z)-(?P<end>\d{8}T\d{6}Z)-(?P<job>local-[^-]+-[0-9a-f]+)"
                  r"-(?P<pane>\d+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.parquet$")


def _t(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def test_streaming_files_per_window_exactly_once_across_a_restart(pubsub_emulator, tiny_model, tmp_path):  # noqa: F811
    em, tag = pubsub_emulator, uuid.uuid4().hex[:8]
    topic = f"files-in-{tag}"
    sub = em.create_subscription(f"files-in-sub-{tag}", topic, ack_deadline_s=10)
    out = tmp_path / "out"
    published: dict[str, str] = {}  # message id -> record id ("" for a bad message)
    published_ids: dict[str, str] = {}  # record id -> message id

    def start(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen(
            [sys.executable, "-m", "beam_pipeline.run", RUNNER, "--streaming", "--input_subscription", sub,
             "--output", str(out / "predictions"), "--dead_letter", str(out / "dead"), "--model", tiny_model,
             "--window_s", str(WINDOW_S), "--file_shards", str(K), "--batch_size", "64", "--batch_duration_s", "0.5",
             "--metrics_port", "0"], env={**os.environ, **em.env}, stdout=log, stderr=subprocess.STDOUT)

    def publish_steadily(stop: threading.Event) -> None:
        i, began = 0, time.monotonic()
        while not stop.is_set() and time.monotonic() - began < PUBLISH_S:
            rid = f"r-{i:05d}"
            if i % 50 == 7:  # a bad record now and then: a dead letter
                payload, attributes = encode_record(table([record(rid, label=9)]).to_batches()[0])
                rid = ""
            else:
                payload, attributes = encode_record(table([record(rid)]).to_batches()[0])
            mid = em.publish(topic, payload, **attributes)
            published[mid] = rid
            if rid:
                published_ids[rid] = mid
            i += 1
            time.sleep(max(0.0, began + i / RATE - time.monotonic()))

    stop = threading.Event()
    publisher = threading.Thread(target=publish_steadily, args=(stop,), daemon=True)
    job1, job2 = start("job1"), None
    try:
        publisher.start()
        deadline = time.monotonic() + PUBLISH_S / 2 + 20
        seen = 0
        while time.monotonic() < deadline:  # kill job 1 just after it put a window's files in place, half way
            assert job1.poll() is None, (tmp_path / "job1.log").read_text()[-3000:]
            files = _files(out)
            if len(files) > seen and time.monotonic() > deadline - 20:
                time.sleep(1.0)  # its acknowledgements are sent; the next window fires about WINDOW_S later
                break
            seen = len(files)
            time.sleep(0.1)
        job1.send_signal(signal.SIGKILL)
        job1.wait(30)
        written_by_1 = {p.name for p in _files(out)}
        assert written_by_1, "job 1 wrote no file before it was killed"
        job2, job2_started = start("job2"), time.time()
        publisher.join(PUBLISH_S + 30)
        assert not publisher.is_alive()
        publish_ended = time.time()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until every message is in a file
            assert job2.poll() is None, (tmp_path / "job2.log").read_text()[-3000:]
            by_record, by_message, _ = _rows(out)
            if {published_ids[r] for r in by_record if r in published_ids} | set(by_message) >= set(published):
                break
            time.sleep(1.0)
    finally:
        stop.set()
        for proc in (job1, job2):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)

    by_record, by_message, rows_by_file = _rows(out)
    # every message exactly once: predictions by record id, dead letters by message id
    assert sorted(by_record) == sorted(published_ids), (len(by_record), len(published_ids))
    assert all(len(files) == 1 for files in by_record.values()), {r: f for r, f in by_record.items() if len(f) > 1}
    bad = {mid for mid, rid in published.items() if not rid}
    assert sorted(by_message) == sorted(bad) and all(len(f) == 1 for f in by_message.values())

    # names: the window, the job, the firing, i of n (numbered over one finalising step, which may hold the files of
    # a late firing too); each file holds rows of its own window (publication time)
    windows: dict[tuple, list[tuple[str, int, int]]] = defaultdict(list)  # (kind, start, job) -> (firing, i, n)
    rows_in: dict[tuple, int] = defaultdict(int)
    for path, (times, count) in rows_by_file.items():
        m = NAME.match(path.name)
        assert m, path.name
        start, end = _t(m["start"]), _t(m["end"])
        assert end - start == WINDOW_S and start % WINDOW_S == 0
        assert all(start - 1e-3 <= t < end + 1e-3 for t in times), (path.name, min(times), max(times))
        windows[(m["kind"], m["start"], m["job"])].append((m["pane"], int(m["i"]), int(m["n"])))
        rows_in[(m["kind"], m["start"], m["job"])] += count
    jobs = sorted({key[2] for key in windows})
    assert len(jobs) == 2  # job 2 wrote under its own id: it never replaced a file of job 1
    assert written_by_1 <= {p.name for p in rows_by_file}, "a file of job 1 was replaced or removed"
    for key, files in windows.items():
        for pane, n in {(p, n) for p, _, n in files}:
            indexes = sorted(i for p, i, total in files if (p, total) == (pane, n))
            assert indexes == sorted(set(indexes)) and all(0 <= i < n <= 2 * K for i in indexes), key
    # steady state (job 1 before the kill; job 2 once what job 1 had not written was redelivered, 10 s + margin,
    # until publishing stopped): each window with data for both shards is K files of one firing
    job1, job2 = (j for j in jobs if j in " ".join(written_by_1)), (j for j in jobs if j not in " ".join(written_by_1))
    job1, job2 = next(job1), next(job2)
    steady = [key for key in windows if key[0] == "predictions" and rows_in[key] >= 2 * RATE and (
        key[2] == job1 or (_t(key[1]) >= job2_started + 15 and _t(key[1]) + WINDOW_S <= publish_ended))]
    assert len(steady) >= 5, sorted(windows)
    assert all(len(windows[k]) == K and {p for p, _, _ in windows[k]} == {"0"} for k in steady), {
        k: windows[k] for k in steady if len(windows[k]) != K or {p for p, _, _ in windows[k]} != {"0"}}


def _rows(out: Path):
    """(record id -> [files], message id -> [files] of dead letters, file -> (publication times, rows))."""
    by_record: dict[str, list[str]] = defaultdict(list)
    by_message: dict[str, list[str]] = defaultdict(list)
    rows_by_file = {}
    for path in _files(out):
        t = pq.read_table(path)
        times = []
        if path.name.startswith("predictions-"):
            for rid in t.column("id").to_pylist():
                by_record[rid].append(path.name)
            times = [s.timestamp() - lat for s, lat in zip(t.column("scored_at").to_pylist(),
                                                           t.column("latency_s").to_pylist())]
        else:
            for source in t.column("source").to_pylist():
                by_message[source.removeprefix("pubsub:")].append(path.name)
        rows_by_file[path] = (times, t.num_rows)
    return by_record, by_message, rows_by_file
