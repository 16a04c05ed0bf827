"""At-least-once Pub/Sub input on in-process runners: a message is acknowledged only once its output is written.

Beam's DirectRunner acknowledges every message as soon as it has pulled it (`_PubSubReadEvaluator._read_from_pubsub`:
"Because of the AutoAck, we are not able to reread messages"), so a local job killed mid-stream lost what it had
pulled but not yet written. (Dataflow's own Pub/Sub source acknowledges once the pull is durably committed: a
worker that dies loses nothing there; see docs/reliability.md.) For jobs that run in this process with
--input_subscription, this module keeps the leases, and beam_pipeline/direct_pubsub.py (the one module that
touches a DirectRunner internal, and why) makes the DirectRunner pull through them:

- `hold()` starts the leases of a subscription in this process: each pulled message's ack id is kept (by message
  id) while it is in flight; a lease thread extends the ack deadlines of held messages (to the subscription's own
  deadline, every third of it), for at most `MAX_LEASE_S`; at most `max_in_flight` messages are held (the pull
  waits: back pressure, bounded memory). A message redelivered while held is not emitted twice (its new ack id is
  kept with the first).
- The writers call `done(ack, sources)` once their output is durable: a Parquet file once Beam moved it into place,
  a Pub/Sub publish once the server confirmed it. A message is acknowledged when `ack.needed` outputs have reported
  it (a prediction both published and written to Parquet: 2; a dead letter: 1).
- Killed before that, a message is redelivered by Pub/Sub after its ack deadline, to the next run on the same
  subscription, and scored again: at least once. Predictions carry the record id, dead letters the message id
  (`source`), so duplicates can be removed downstream.

It only works in one process (the leases and the writers meet in this module's registry), so the job builds it
for in-process runners only; tests/test_dataflow_graph.py checks that no Dataflow graph refers to it.

Prediction tables carry the Pub/Sub source of each row in their schema metadata (`emmr.sources`) from formatting
to the writers, which drop it; dead-letter tables have it in their `source` column.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa

log = logging.getLogger(__name__)

SOURCES_KEY = b"emmr.sources"
PUBSUB_PREFIX = "pubsub:"
MAX_LEASE_S = 3600.0  # like google-cloud-pubsub's default max_lease_duration: then Pub/Sub may redeliver
PULL_MAX = 100  # messages per pull
ACK_CHUNK = 1000  # ack ids per acknowledge / modify_ack_deadline request
DEFAULT_DEADLINE_S = 60


@dataclass(frozen=True)
class AckAfter:
    """Given to a writer: acknowledge the rows' messages on `subscription` once `needed` writers wrote them."""

    subscription: str
    needed: int = 1


# ------------------------------------------------------------------------------------------- sources of rows


def with_sources(table: pa.Table, sources: list[str]) -> pa.Table:
    """The table with each row's source (`pubsub:<message id>`) in its schema metadata."""
    meta = dict(table.schema.metadata or {})
    meta[SOURCES_KEY] = json.dumps(sources).encode()
    return table.replace_schema_metadata(meta)


def sources_of(table: pa.Table) -> list[str]:
    """Each row's source: from the metadata `with_sources` wrote, else the `source` column (dead letters)."""
    meta = table.schema.metadata or {}
    if SOURCES_KEY in meta:
        return json.loads(meta[SOURCES_KEY])
    if "source" in table.schema.names:
        return [s for s in table.column("source").to_pylist() if s]
    return []


def message_ids(sources: list[str]) -> list[str]:
    return [s[len(PUBSUB_PREFIX):] for s in sources if s and s.startswith(PUBSUB_PREFIX)]


# ------------------------------------------------------------------------------------------- leases


def subscriber_client():
    """A Pub/Sub SubscriberClient that receives messages of any size. Against the emulator (PUBSUB_EMULATOR_HOST) the
    library opens a plain gRPC channel with gRPC's 4 MiB receive limit, so one pull holding more (a large message,
    or many) fails with RESOURCE_EXHAUSTED and, never acknowledged, comes back forever; against Pub/Sub itself the
    library lifts the limit, as this does for the emulator."""
    import os

    from google.cloud import pubsub_v1

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


@dataclass
class _Held:
    ack_ids: list[str]
    since: float
    done: int = 0


@dataclass
class Leases:
    """The messages of one subscription pulled and not yet acknowledged."""

    subscription: str
    max_in_flight: int = 1000
    client: object = None
    deadline_s: int = DEFAULT_DEADLINE_S
    _held: dict[str, _Held] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: int = 0

    def start(self) -> "Leases":
        self.client = self.client or subscriber_client()
        try:
            self.deadline_s = int(self.client.get_subscription(subscription=self.subscription).ack_deadline_seconds)
        except Exception as e:  # noqa: BLE001 - the default is safe, only slower to redeliver
            log.warning("could not read the ack deadline of %s (%s); extending leases to %d s", self.subscription, e,
                        self.deadline_s)
        threading.Thread(target=self._extend_forever, name="emmr-pubsub-leases", daemon=True).start()
        log.info("at-least-once reading of %s: acknowledged after output, ack deadline %d s, at most %d in flight",
                 self.subscription, self.deadline_s, self.max_in_flight)
        return self

    def in_flight(self) -> int:
        with self._cond:
            return len(self._held)

    def pull(self, timeout_s: float = 10.0) -> list:
        """Pull up to PULL_MAX messages without acknowledging them (google.pubsub_v1 ReceivedMessage.message
        objects, new ones only); [] while max_in_flight are held."""
        with self._cond:
            if len(self._held) >= self.max_in_flight:
                self._cond.wait(timeout=1.0)
            room = self.max_in_flight - len(self._held)
        if room <= 0:
            return []
        from google.api_core import exceptions as gexc

        try:
            response = self.client.pull(subscription=self.subscription, max_messages=min(PULL_MAX, room),
                                        timeout=timeout_s)
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.RetryError, gexc.InternalServerError,
                gexc.Aborted) as e:  # transient: pull again next time
            log.warning("pull from %s failed (%s); pulling again", self.subscription, e)
            return []
        fresh = []
        now = time.monotonic()
        with self._cond:
            for received in response.received_messages:
                held = self._held.get(received.message.message_id)
                if held is not None:  # redelivered while in flight: keep its ack id, do not score it twice
                    held.ack_ids.append(received.ack_id)
                else:
                    self._held[received.message.message_id] = _Held([received.ack_id], now)
                    fresh.append(received.message)
        return fresh

    def done(self, ids: list[str], needed: int) -> int:
        """Outputs of these messages are written; acknowledge those that have all `needed`. Returns how many."""
        ack_ids = []
        with self._cond:
            for message_id in ids:
                held = self._held.get(message_id)
                if held is None:  # already acknowledged (a duplicate output), or not ours
                    continue
                held.done += 1
                if held.done >= needed:
                    ack_ids += held.ack_ids
                    del self._held[message_id]
            self._cond.notify_all()
        self._request("acknowledge", ack_ids)
        self.acknowledged += len(ack_ids)
        return len(ack_ids)

    def _request(self, method: str, ack_ids: list[str], **kw) -> None:
        for start in range(0, len(ack_ids), ACK_CHUNK):
            try:
                getattr(self.client, method)(subscription=self.subscription, ack_ids=ack_ids[start:start + ACK_CHUNK],
                                             **kw)
            except Exception as e:  # noqa: BLE001 - Pub/Sub redelivers what was not acknowledged: a duplicate
                log.warning("%s of %d messages on %s failed (%s): they will be delivered again", method,
                            len(ack_ids[start:start + ACK_CHUNK]), self.subscription, e)

    def _extend_forever(self) -> None:
        every = max(1.0, self.deadline_s / 3)
        while not self._stop.wait(every):
            now = time.monotonic()
            with self._cond:
                expired = [m for m, h in self._held.items() if now - h.since > MAX_LEASE_S]
                for m in expired:  # given up: Pub/Sub will redeliver it
                    del self._held[m]
                ack_ids = [a for h in self._held.values() for a in h.ack_ids]
                if expired:
                    self._cond.notify_all()
            if expired:
                log.warning("%d messages of %s were not written within %.0f s; leaving them to be redelivered",
                            len(expired), self.subscription, MAX_LEASE_S)
            self._request("modify_ack_deadline", ack_ids, ack_deadline_seconds=self.deadline_s)

    def stop(self) -> None:
        self._stop.set()


def max_in_flight(config) -> int:
    """How many messages a job may hold unacknowledged: a few batches; and, when predictions or dead letters go to
    streaming Parquet files (acknowledged once a window's file is in place: up to about three windows and two
    grace periods after its first message, beam_pipeline/writes.py), room for 100 messages a second over that
    time, so that the windows do not throttle the job."""
    files = bool(config.output) or not config.dead_letter_is_topic
    held_s = 3 * config.window_s + 4 * max(5.0, 4 * config.batch_duration_s)
    return max(1000, 4 * config.batch_size) + (int(100 * held_s) if files else 0)


_lock = threading.Lock()
_leases: dict[str, Leases] = {}


def hold(subscription: str, max_in_flight: int = 1000) -> Leases:
    """Read `subscription` at least once in this process: its leases (started once; idempotent)."""
    with _lock:
        leases = _leases.get(subscription)
        if leases is None:
            leases = _leases[subscription] = Leases(subscription, max_in_flight).start()
        return leases


def leases(subscription: str) -> Leases | None:
    return _leases.get(subscription)


def done(ack: AckAfter | None, sources: list[str]) -> int:
    """Called by a writer once `sources`' rows are durably written (no-op without an AckAfter or leases here)."""
    if ack is None:
        return 0
    held = _leases.get(ack.subscription)
    if held is None:
        return 0
    return held.done(message_ids(sources), ack.needed)
