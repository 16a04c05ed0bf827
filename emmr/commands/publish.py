"""Publish input v1 Parquet records to a Pub/Sub topic, one record per message (Pub/Sub message v1).

Reads the Parquet files of --data a batch at a time and publishes each row as an Arrow IPC message with the
schema version and record id in its attributes. PUBSUB_EMULATOR_HOST is honoured; on the emulator the topic is
created when absent (elsewhere only with --create-topic). Examples:
  emmr publish --topic emmr-input --data data/test
  emmr publish --topic projects/my-project/topics/emmr-input --data data/test --rate 200 --limit 1000
Exit status: 0 when every record read was published; 1 when some could not be encoded (e.g. over the size
limit) or published, each named in the log; 2 for bad arguments or no input.
"""

from __future__ import annotations

import argparse
import logging

from schemas.message import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", required=True, help="topic id (in --project) or projects/PROJECT/topics/TOPIC")
    p.add_argument("--data", required=True, help="folder (searched recursively), glob or file of input v1 Parquet")
    p.add_argument("--rate", type=_positive_float, default=None, help="at most this many records per second (default: as fast as possible)")
    p.add_argument("--project", default=None, help="project of a short topic id (default: $GOOGLE_CLOUD_PROJECT, else emmr-local)")
    p.add_argument("--limit", type=_positive_int, default=None, help="publish at most this many records")
    p.add_argument("--create-topic", action="store_true", default=None,
                   help="create the topic if it does not exist (always done on the emulator)")
    p.add_argument("--max-message-bytes", type=_positive_int, default=MAX_MESSAGE_BYTES,
                   help=f"records whose message would be larger are reported and not published (default {MAX_MESSAGE_BYTES})")
    p.add_argument("--batch-size", type=_positive_int, default=1024, help="rows read from Parquet at a time")
    p.add_argument("--timeout", type=_positive_float, default=300.0,
                   help="seconds to wait for the last confirmations; unconfirmed messages count as failed")


def run(args: argparse.Namespace) -> int:
    from emmr.publish import publish

    report = publish(args.data, args.topic, project=args.project, rate=args.rate, limit=args.limit,
                     create_topic=args.create_topic, max_message_bytes=args.max_message_bytes,
                     batch_size=args.batch_size, timeout_s=args.timeout)
    if report.ok:
        log.info("%s", report.summary())
        return 0
    log.error("%s", report.summary())
    return 1
