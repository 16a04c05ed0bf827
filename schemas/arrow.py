"""The data contracts as Arrow schemas, built in this one module. See schemas/README.md for the prose.

Every schema carries its name and version in its metadata (`emmr.schema`, `emmr.schema_version`). The
input schema depends on the modalities (names, dimensions), which come from the model's configuration.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.modality import ModalitySpec

SCHEMA_VERSION = "1"
INPUT, PREDICTION, DEAD_LETTER = "input", "prediction", "dead_letter"
TIMESTAMP = pa.timestamp("us", tz="UTC")


def _meta(name: str) -> dict[bytes, bytes]:
    return {b"emmr.schema": name.encode(), b"emmr.schema_version": SCHEMA_VERSION.encode()}


def modality_type(dim: int) -> pa.DataType:
    """A sequence of frames or tokens: list<fixed_size_list<float32>[dim]>; null or empty = missing.

    The outer list is nullable; the inner fixed-size list is not (pyarrow < 26 cannot read back a
    nullable fixed_size_list column holding nulls, apache/arrow#35692). List children are named
    "element", as Parquet names them, so that schemas round-trip exactly.
    """
    return pa.list_(pa.field("element", pa.list_(pa.field("element", pa.float32(), nullable=False), dim), nullable=False))


def input_schema(modalities: tuple[ModalitySpec, ...], truth: bool = False) -> pa.Schema:
    """Input record v1: id, one column per modality, optional label and event_time.

    With `truth`, the synthetic ground-truth columns follow (emmr/synth.py): `evidence_<modality>` (float32, the
    latent sentiment evidence), `key_<modality>` (bool: neutralising it flips the label), `label_without_<modality>`
    (int64: the label with it neutralised), `p_key_<modality>` (float32: the probability that it is key given the
    other modalities), `latent` (list<float32>: the shared factors) and `dropped` (string). Validation ignores them.
    """
    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(m.name, modality_type(m.dim), nullable=True) for m in modalities]
    fields += [pa.field("label", pa.int64(), nullable=True), pa.field("event_time", TIMESTAMP, nullable=True)]
    if truth:
        fields += [pa.field(f"evidence_{m.name}", pa.float32(), nullable=True) for m in modalities]
        fields += [pa.field(f"key_{m.name}", pa.bool_(), nullable=True) for m in modalities]
        fields += [pa.field(f"label_without_{m.name}", pa.int64(), nullable=True) for m in modalities]
        fields += [pa.field(f"p_key_{m.name}", pa.float32(), nullable=True) for m in modalities]
        fields += [pa.field("latent", pa.list_(pa.field("element", pa.float32(), nullable=False)), nullable=True)]
        fields += [pa.field("dropped", pa.string(), nullable=True)]
    return pa.schema(fields, metadata=_meta(INPUT))


def prediction_schema() -> pa.Schema:
    """Prediction v1: one row per scored record."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),  # predicted label name
            pa.field("label_index", pa.int32(), nullable=False),
            pa.field("probabilities", pa.list_(pa.field("element", pa.float32(), nullable=False)), nullable=False),
            pa.field("missing", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
            pa.field("key_missing", pa.bool_(), nullable=False),  # key_missing_score >= the model's threshold
            pa.field("key_missing_score", pa.float32(), nullable=False),  # P(the missing modality is key); 0 if none
            pa.field("key_modality", pa.string(), nullable=True),  # the missing modality that flips the label
            pa.field("label_full", pa.int32(), nullable=True),  # argmax of the recovered full-input head (Eq. 8)
            pa.field("label_pair", pa.int32(), nullable=True),  # argmax of the pair head without the key modality (Eq. 9)
            pa.field("ensemble_used", pa.bool_(), nullable=False),  # Eq. 13 took the ensemble branch
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("scored_at", TIMESTAMP, nullable=False),
            pa.field("event_time", TIMESTAMP, nullable=True),
            pa.field("latency_s", pa.float64(), nullable=True),  # streaming: scored_at - publish time
        ],
        metadata=_meta(PREDICTION),
    )


def dead_letter_schema() -> pa.Schema:
    """Dead letter v1: a record that could not be scored, with why and what it was."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=True),  # what could be parsed of the id
            pa.field("source", pa.string(), nullable=False),  # file#row=N, or pubsub:message_id
            pa.field("error_kind", pa.string(), nullable=False),
            pa.field("error", pa.string(), nullable=False),
            pa.field("payload", pa.binary(), nullable=True),  # raw bytes, bounded (see MAX_PAYLOAD_BYTES)
            pa.field("failed_at", TIMESTAMP, nullable=False),
            pa.field("pipeline_version", pa.string(), nullable=False),
        ],
        metadata=_meta(DEAD_LETTER),
    )


# A dead letter keeps its whole record up to the message limit (a paper-size record is about 380 kB), so it
# can be replayed; larger payloads are cut there.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


def schema_name_version(schema: pa.Schema) -> tuple[str | None, str | None]:
    """The (name, version) recorded in a schema's metadata, or Nones where it records none."""
    meta = schema.metadata or {}
    name, version = meta.get(b"emmr.schema"), meta.get(b"emmr.schema_version")
    # bytes that are not UTF-8 read as replacement characters: a version nobody knows, not a crash
    return (name.decode(errors="replace") if name else None, version.decode(errors="replace") if version else None)
