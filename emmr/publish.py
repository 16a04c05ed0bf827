"""Publish input v1 Parquet records to Pub/Sub: one record per message (Pub/Sub message v1).

Files are read one Arrow record batch at a time (never the whole folder); each row is a zero-copy one-row slice,
encoded by `schemas.message.encode_record` and handed to google-cloud-pubsub's PublisherClient, which batches
publish requests in the background (with flow control, so memory stays bounded). Records are not validated here
(the scoring job dead-letters invalid ones, and publishing invalid records is how that path is exercised).
Every record read ends up counted as published, unencodable (too large, say) or failed to publish; nothing is
dropped silently. PUBSUB_EMULATOR_HOST is honoured by the client; there the topic is created when absent.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from emmr.batch import parquet_files
from emmr.progress import Progress
from schemas.message import ATTR_ID, MAX_MESSAGE_BYTES, encode_record

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "emmr-local"
MAX_LOGGED_ERRORS = 20  # logged one by one; the rest are counted
MAX_KEPT_ERRORS = 100
_TOPIC_ID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9\-:.]{1,99}$")


def resolve_topic(topic: str, project: str | None = None) -> str:
    """A short topic id (with `project`, else $GOOGLE_CLOUD_PROJECT, else "emmr-local") or projects/P/topics/T
    -> the full topic path. Raises ValueError for a malformed name or a project that contradicts the path."""
    if topic.startswith("projects/"):
        parts = topic.split("/")
        if len(parts) != 4 or parts[2] != "topics" or not parts[1]:
            raise ValueError(f"topic {topic!r}: expected projects/PROJECT/topics/TOPIC")
        if project and project != parts[1]:
            raise ValueError(f"topic {topic!r} is in project {parts[1]!r}, but --project says {project!r}")
        project, topic_id = parts[1], parts[3]
    else:
        if "/" in topic:
            raise ValueError(f"topic {topic!r}: give a topic id or projects/PROJECT/topics/TOPIC")
        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT
        topic_id = topic
    if not _TOPIC_ID.match(topic_id) or topic_id.lower().startswith("goog"):
        raise ValueError(f"topic id {topic_id!r}: 3 to 255 characters, starting with a letter, of letters, digits and "
                         "-_.~+%, not starting with 'goog'")
    if not _PROJECT_ID.match(project):
        raise ValueError(f"project {project!r}: not a valid project id")
    return f"projects/{project}/topics/{topic_id}"


def iter_records(path: str, batch_size: int = 1024, limit: int | None = None) -> Iterator[tuple[str, int, pa.RecordBatch]]:
    """(file, row in file, one-row batch) for each record of the Parquet files at `path`, in file order.

    Reads `batch_size` rows at a time; the one-row batches are zero-copy slices.
    """
    if limit is not None and limit <= 0:
        return
    n = 0
    for f in parquet_files(path):
        row = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
            for i in range(batch.num_rows):
                yield f, row + i, batch.slice(i, 1)
                n += 1
                if limit is not None and n >= limit:
                    return
            row += batch.num_rows


class RateLimiter:
    """At most `rate` calls of `wait()` per second, on average since the first call (no bursts beyond one)."""

    def __init__(self, rate: float | None, clock=time.monotonic, sleep=time.sleep):
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start: float | None = None
        self.count = 0

    def wait(self) -> None:
        if self.rate is None:
            return
        now = self.clock()
        if self.start is None:
            self.start = now
        due = self.start + self.count / self.rate
        if due > now:
            self.sleep(due - now)
        self.count += 1


@dataclass
class PublishReport:
    topic: str
    read: int = 0
    published: int = 0
    unencodable: int = 0  # encode_record refused the row (too large, not one row)
    publish_failed: int = 0  # the client or the server refused the message, or it was not confirmed in time
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first MAX_KEPT_ERRORS, each naming the record

    @property
    def failed(self) -> int:
        return self.unencodable + self.publish_failed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.published == self.read

    def summary(self) -> str:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        return (f"published {self.published} of {self.read} records to {self.topic} in {self.seconds:.1f} s "
                f"({rate:.0f}/s); not published: {self.failed} ({self.unencodable} could not be encoded, "
                f"{self.publish_failed} failed to publish)")


class _Tracker:
    """Counts publish outcomes from the client's callback threads; waits for all of them."""

    def __init__(self, report: PublishReport):
        self.report = report
        self.submitted = self.done = 0
        self.closed = False  # after the wait gave up: late confirmations no longer change the report
        self.cond = threading.Condition()

    def error(self, kind: str, message: str) -> None:
        """Record an error (the caller holds no lock)."""
        with self.cond:
            self._error(kind, message)

    def _error(self, kind: str, message: str) -> None:
        r = self.report
        if kind == "encode":
            r.unencodable += 1
        else:
            r.publish_failed += 1
        if len(r.errors) < MAX_KEPT_ERRORS:
            r.errors.append(message)
        if r.failed <= MAX_LOGGED_ERRORS:
            log.error("%s", message)
        elif r.failed == MAX_LOGGED_ERRORS + 1:
            log.error("more records were not published; counting them without logging each")

    def submit(self, future, where: str) -> None:
        with self.cond:
            self.submitted += 1

        def done(f) -> None:
            exc = f.exception()
            with self.cond:
                if self.closed:
                    return
                if exc is None:
                    self.report.published += 1
                else:
                    self._error("publish", f"{where}: publish failed: {type(exc).__name__}: {exc}")
                self.done += 1
                self.cond.notify_all()

        future.add_done_callback(done)

    def wait(self, timeout: float) -> int:
        """Wait until every submitted message is confirmed or failed. Those still pending after `timeout` count as
        failed, and the report is frozen; return how many they were."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.done < self.submitted and time.monotonic() < deadline:
                self.cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            pending = self.submitted - self.done
            if pending:
                self._error("publish", f"{pending} message(s) not confirmed within {timeout:g} s")
                self.report.publish_failed += pending - 1  # _error counted one
            self.closed = True
            return pending


def make_publisher(max_messages: int = 500, max_bytes: int = 5_000_000, max_latency_s: float = 0.02,
                   max_in_flight: int = 10_000, max_in_flight_bytes: int = 64 * 1024 * 1024):
    """A PublisherClient that batches requests (up to `max_messages` / `max_bytes` / `max_latency_s`) and blocks
    the caller when `max_in_flight` messages or bytes are unconfirmed."""
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    return pubsub_v1.PublisherClient(
        batch_settings=types.BatchSettings(max_messages=max_messages, max_bytes=max_bytes, max_latency=max_latency_s),
        publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
            message_limit=max_in_flight, byte_limit=max_in_flight_bytes,
            limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK)),
    )


def ensure_topic(publisher, topic: str) -> bool:
    """Create the topic if it does not exist; return whether it was created."""
    from google.api_core.exceptions import AlreadyExists, NotFound

    try:
        publisher.get_topic(topic=topic)
        return False
    except NotFound:
        try:
            publisher.create_topic(name=topic)
            log.info("created topic %s", topic)
            return True
        except AlreadyExists:
            return False


def _records_in(files: list[str], limit: int | None) -> int | None:
    """How many records will be read, from the files' footers (None when a footer cannot be read)."""
    try:
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (OSError, pa.ArrowException):
        return limit
    return min(total, limit) if limit is not None else total


def publish(path: str, topic: str, project: str | None = None, rate: float | None = None, limit: int | None = None,
            create_topic: bool | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES, batch_size: int = 1024,
            timeout_s: float = 300.0, publisher=None, progress_every_s: float = 10.0) -> PublishReport:
    """Publish the records of the Parquet files at `path` to `topic`, one message each; see the module docstring.

    create_topic: None = create it when absent only on the emulator (PUBSUB_EMULATOR_HOST set), True = always,
    False = never. timeout_s bounds the wait for confirmations once everything is submitted; messages still
    unconfirmed then count as failed.
    """
    topic_path = resolve_topic(topic, project)
    files = parquet_files(path)  # raises FileNotFoundError before anything is published
    limiter = RateLimiter(rate)
    if create_topic is None:
        create_topic = bool(os.environ.get("PUBSUB_EMULATOR_HOST"))
    own_publisher = publisher is None
    publisher = publisher or make_publisher()
    if create_topic:
        ensure_topic(publisher, topic_path)
    report = PublishReport(topic=topic_path)
    tracker = _Tracker(report)
    log.info("publishing records of %d file(s) at %s to %s%s%s", len(files), path, topic_path,
             f" at most {rate:g}/s" if rate else "", f" (at most {limit})" if limit is not None else "")
    t0 = time.monotonic()
    meter = Progress(f"publishing to {topic_path}", total=_records_in(files, limit), every_s=progress_every_s, logger=log)
    for f, row, record in iter_records(path, batch_size=batch_size, limit=limit):
        report.read += 1
        meter.update()
        where = f"{f}#row={row}"
        try:
            data, attributes = encode_record(record, max_bytes=max_message_bytes)
        except (ValueError, pa.ArrowException) as e:
            tracker.error("encode", f"{where}: not published: {e}")
            continue
        where = f"{where} (record {attributes.get(ATTR_ID)!r})"
        limiter.wait()
        try:
            future = publisher.publish(topic_path, data, **attributes)
        except Exception as e:  # the client refused it synchronously (size, attributes, stopped client)
            tracker.error("publish", f"{where}: publish failed: {type(e).__name__}: {e}")
            continue
        tracker.submit(future, where)
    meter.close()
    tracker.wait(timeout_s)
    report.seconds = time.monotonic() - t0
    if own_publisher:
        try:
            publisher.stop()
        except Exception as e:  # pragma: no cover - nothing is left to send by now
            log.debug("stopping the publisher: %s", e)
    return report
