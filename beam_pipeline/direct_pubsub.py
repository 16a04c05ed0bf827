"""The one place the job changes Beam internals: the DirectRunner's Pub/Sub pull, made to leave acknowledging to
the job (beam_pipeline/acks.py), for in-process streaming runs reading a subscription.

Why not a public way: the DirectRunner reads Pub/Sub through `_PubSubReadEvaluator`, which acknowledges every
message in the same call that pulls it. The public alternative, a `PeriodicImpulse` driving a DoFn that pulls with
the client library and acknowledges later, fails on Beam 2.77's streaming DirectRunner as soon as the job also has
a stateful DoFn (the job batches messages with GroupIntoBatches): "Transform node ... PeriodicImpulse/GenSequence/
ProcessKeyedElements/GroupByKey was not replaced as expected" (tried while working on issue #13). Beam's own
`ReadFromPubSub` has no option to defer acknowledgements. So `install()` replaces one method,
`_PubSubReadEvaluator._read_from_pubsub`, for the subscriptions the job holds (others keep Beam's behaviour), and
only on the Beam versions it was checked against (VALIDATED_BEAM): on any other version it raises, so that an
upgrade cannot silently lose messages; re-check the method (its signature, what it returns) and add the version.

Never on Dataflow: remote runners use Dataflow's native Pub/Sub source, and the graph never refers to this module
(tests/test_dataflow_graph.py).
"""

from __future__ import annotations

import inspect
import threading

VALIDATED_BEAM = ("2.77.0",)  # versions whose _PubSubReadEvaluator._read_from_pubsub this replacement matches

_lock = threading.Lock()
_original = None


def check_beam_version(version: str | None = None) -> None:
    """Raise unless the installed Beam (or `version`) is one this module was checked against."""
    import apache_beam

    version = version or apache_beam.__version__
    if version not in VALIDATED_BEAM:
        raise RuntimeError(
            f"beam_pipeline/direct_pubsub.py replaces a private method of the DirectRunner, checked on Beam "
            f"{', '.join(VALIDATED_BEAM)} only; this is Beam {version}. Check "
            "apache_beam.runners.direct.transform_evaluator._PubSubReadEvaluator._read_from_pubsub, then add the "
            "version to VALIDATED_BEAM (local streaming runs would otherwise lose the messages in flight when killed)")


def install() -> None:
    """Make the DirectRunner's Pub/Sub pull defer acknowledgements for the subscriptions held in beam_pipeline.acks
    (others keep Beam's). Idempotent; raises on an unvalidated Beam version or a changed method."""
    global _original
    check_beam_version()
    from apache_beam.runners.direct import transform_evaluator

    from beam_pipeline import acks

    evaluator = transform_evaluator._PubSubReadEvaluator
    with _lock:
        if _original is not None:
            return
        original = getattr(evaluator, "_read_from_pubsub", None)
        if original is None or list(inspect.signature(original).parameters) != ["self", "timestamp_attribute"]:
            raise RuntimeError("the DirectRunner's _PubSubReadEvaluator._read_from_pubsub is not the method "
                               "beam_pipeline/direct_pubsub.py replaces: at-least-once reading cannot be installed")
        _original = original

        def read_from_pubsub(self, timestamp_attribute):
            held = acks.leases(self._sub_name)
            if held is None:
                return original(self, timestamp_attribute)
            return [_element(m, timestamp_attribute) for m in held.pull()]

        evaluator._read_from_pubsub = read_from_pubsub


def _element(message, timestamp_attribute):
    """(timestamp, PubsubMessage) as the DirectRunner's pull makes them: the publish time, or the attribute."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp

    parsed = PubsubMessage._from_message(message)
    if timestamp_attribute and timestamp_attribute in parsed.attributes:
        value = parsed.attributes[timestamp_attribute]
        try:
            stamp = Timestamp(micros=int(value) * 1000)
        except ValueError:
            stamp = Timestamp.from_rfc3339(value)
    else:
        stamp = Timestamp.from_utc_datetime(message.publish_time)
    return stamp, parsed
