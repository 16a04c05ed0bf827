"""Streaming Parquet output on the Pub/Sub emulator (issue #13, part 1): per event-time window, K files, each
message exactly once, and a restarted job adds no duplicate file.

Messages are published at a steady rate for at least 60 s; the job writes predictions and dead letters to Parquet
with --window_s 5 --file_shards 2. Job 1 is killed (SIGKILL) just after it put a window's files in place, half way
and once it has written MIN_1 full windows, and job 2 starts on the same subscription: what job 1 pulled but had
not written comes back to job 2 after the ack deadline (10 s). Publishing goes on until job 2 has run live (it
keeps up: a file of fresh records each scored within KEPT_UP_S) for MIN_2 full windows more, so a slow start on a
loaded machine makes the run longer, not the evidence thinner (bounded by LIMIT_S). Then every message is in
exactly one file (predictions by record id, dead letters by message id), every file lies in the window its name
says (publication time = scored_at - latency_s), each (window, job, firing) has at most K files, numbered 0..n-1
of n, and every steady window (job 1's and job 2's once each was live, job 2's until publishing stopped) has exactly K
files in its on-time firing (a late firing, which the DirectRunner's wall-clock watermark makes after a backlog, adds at
most K more). File names carry the job id: job 2 never rewrites a file of job 1.
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
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.message import encode_record
from test_bad_inputs import record, table
from test_pipeline import tiny_model  # noqa: F401 - session fixture: a model with hand-set weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNNER = "--runner=DirectRunner"
K, WINDOW_S, PUBLISH_S, RATE = 2, 5, 60, 8  # shards, window, least s of publishing, messages/s
MIN_1, MIN_2 = 3, 2  # full windows job 1 writes before it is killed; job 2 scores live before publishing stops
LIMIT_S = 240  # a run that has not covered them by then fails
KEPT_UP_S = 5.0  # a job keeps up when it scores each record within this long of its publication
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

    def publish_steadily(stop: threading.Event, enough: threading.Event) -> None:
        i, began = 0, time.monotonic()
        while not stop.is_set() and (time.monotonic() - began < PUBLISH_S or not enough.is_set()):
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

    stop, enough = threading.Event(), threading.Event()
    publisher = threading.Thread(target=publish_steadily, args=(stop, enough), daemon=True)
    job1, job2 = start("job1"), None
    began = time.time()
    try:
        publisher.start()
        seen: set[str] = set()
        live_1 = None  # job 1 starts as publishing begins: its first windows hold what came during its start-up
        while True:  # kill job 1 just after it put a window's files in place, half way, MIN_1 full windows after it was live
            assert job1.poll() is None, (tmp_path / "job1.log").read_text()[-3000:]
            assert time.time() - began < LIMIT_S, f"job 1 wrote {sorted(seen)} in {LIMIT_S} s"
            if live_1 is None and _keeps_up(out, set(), began):
                live_1 = time.time()
            names = {p.name for p in _files(out)}
            if (names - seen and time.time() - began > PUBLISH_S / 2 and live_1 is not None
                    and len({w for w in _full_windows(out) if live_1 <= _t(w)}) >= MIN_1):
                time.sleep(1.0)  # its acknowledgements are sent; the next window fires about WINDOW_S later
                break
            seen = names
            time.sleep(0.2)
        job1.send_signal(signal.SIGKILL)
        job1.wait(30)
        written_by_1 = {p.name for p in _files(out)}
        assert written_by_1, "job 1 wrote no file before it was killed"
        job2, live_from, killed = start("job2"), None, time.time()
        while not enough.is_set():  # job 2 is live once it keeps up; then publish MIN_2 full windows on
            assert job2.poll() is None, (tmp_path / "job2.log").read_text()[-3000:]
            assert time.time() - began < LIMIT_S, f"job 2 was not live for {MIN_2} windows in {LIMIT_S} s"
            if live_from is None and _keeps_up(out, written_by_1, killed):
                live_from = time.time()
            if live_from is not None and time.time() >= live_from + (MIN_2 + 1) * WINDOW_S:
                enough.set()
            time.sleep(0.2)
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
    # steady state: job 1's windows from when it was live (keeping up: past its start-up, during which publishing had
    # begun) until it was killed, just after a window's files; job 2's from when it was live (past its start-up, the
    # backlog and what job 1 had not written, all published before) until publishing stopped. Each window with data
    # for both shards is K files of one firing.
    job1, job2 = (j for j in jobs if j in " ".join(written_by_1)), (j for j in jobs if j not in " ".join(written_by_1))
    job1, job2 = next(job1), next(job2)
    full = {key for key in windows if key[0] == "predictions" and rows_in[key] >= 2 * RATE}
    steady_1 = [key for key in full if key[2] == job1 and live_1 <= _t(key[1])]
    steady_2 = [key for key in full
                if key[2] == job2 and live_from <= _t(key[1]) and _t(key[1]) + WINDOW_S <= publish_ended]
    assert len(steady_1) >= MIN_1 and len(steady_2) >= MIN_2, (sorted(steady_1), sorted(steady_2), sorted(windows))
    # The on-time firing of a steady window is K files. A late firing may add up to K more: the DirectRunner's
    # Pub/Sub watermark is the wall clock at each pull, so records a loaded machine leaves in a backlog past their
    # window's end come late (seen in CI after a job was live; never a record twice).
    files_per_firing = {k: Counter(p for p, _, _ in windows[k]) for k in steady_1 + steady_2}
    assert all(n["0"] == K and max(n.values()) <= K for n in files_per_firing.values()), {
        k: windows[k] for k, n in files_per_firing.items() if n["0"] != K or max(n.values()) > K}


def _keeps_up(out: Path, earlier: set[str], since: float) -> bool:
    """A new prediction file of a window that began after `since` (messages job 1 never saw) whose every record
    was scored within KEPT_UP_S of its publication: the job has worked through its backlog (the DirectRunner's
    Pub/Sub watermark is the wall clock at each pull, so records still in a backlog when their window's end
    passes come late: a second firing)."""
    for path in _files(out):
        m = NAME.match(path.name)
        if path.name in earlier or not m or m["kind"] != "predictions" or _t(m["start"]) < since:
            continue
        latency = pq.read_table(path, columns=["latency_s"]).column("latency_s").to_pylist()
        if latency and max(latency) <= KEPT_UP_S:
            return True
    return False


def _full_windows(out: Path) -> set[str]:
    """Starts of the prediction windows written so far with rows for both shards (2 s of messages or more)."""
    rows: dict[str, int] = defaultdict(int)
    for path in _files(out):
        m = NAME.match(path.name)
        if m and m["kind"] == "predictions":
            rows[m["start"]] += pq.read_metadata(path).num_rows
    return {start for start, n in rows.items() if n >= 2 * RATE}


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
