"""The coder of the job's elements (beam_pipeline/elements.py, prediction and dead-letter tables): pickle, with a
size estimate read off Arrow's byte counts instead of an encoding.

Beam estimates the bytes of a sample of every PCollection's elements (the first ten, then fewer and fewer) by
encoding them with the PCollection's coder. With Beam's default coder an element that is not a primitive is
pickled for that, so a job of a few dozen large elements pickled most of its input once more per stage just to
count bytes (benchmarks/io_ceiling.py: about a quarter of a no-op run's steady time). `register()` gives these
types this coder; the job declares its PCollections' element types (beam_pipeline/pipeline.py) so Beam uses it.
Encoding is unchanged: Beam's PickleCoder, whose output for a ScoringBatch carries only its own rows (elements.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam import coders

from beam_pipeline.elements import ParquetChunk, ScoringBatch


def approximate_bytes(value: Any) -> int:
    """About what pickling `value` writes, without writing it: Arrow and numpy byte counts, 64 bytes per other
    field, recursing through dataclasses, lists, tuples and dicts."""
    if isinstance(value, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)):
        return int(value.nbytes) + 256
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 128 if value.dtype != object else 64 * value.size + 128
    if isinstance(value, (bytes, str)):
        return len(value) + 16
    if isinstance(value, (list, tuple)):
        return 16 + sum(approximate_bytes(v) for v in value)
    if isinstance(value, dict):
        return 16 + sum(approximate_bytes(k) + approximate_bytes(v) for k, v in value.items())
    fields = getattr(value, "__dict__", None)
    if fields is not None:
        return 64 + sum(approximate_bytes(v) for v in fields.values())
    return 64


class ElementCoder(coders.Coder):
    """Beam's PickleCoder (what Beam's default coder falls back to for these types: the job's own elements, never
    input bytes), with approximate_bytes as the size estimate; not deterministic (never a key)."""

    def __init__(self):
        self._pickle = coders.PickleCoder()

    def encode(self, value: Any) -> bytes:
        return self._pickle.encode(value)

    def decode(self, encoded: bytes) -> Any:
        return self._pickle.decode(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        return approximate_bytes(value)

    def to_type_hint(self):
        return Any

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


def typed(pcoll, element_type):
    """Declare the element type of a PCollection made by a transform that declares none (Beam's Read, RunInference),
    so that its coder is the registered one. Returns the PCollection."""
    pcoll.element_type = element_type
    return pcoll


def register() -> None:
    """Use ElementCoder for the job's element types wherever a PCollection declares one of them."""
    from beam_pipeline.handler import ScoredBatch

    for t in (ParquetChunk, ScoringBatch, ScoredBatch, pa.Table):
        coders.registry.register_coder(t, ElementCoder)
