"""Pub/Sub message v1: one input record per message, as an Arrow IPC stream of a one-row batch.

Files and messages share one Arrow schema (input record v1), so decoding a message costs no Python object
per float. The attributes carry the schema version, the record id and the content type; the payload size
is bounded.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.arrow import SCHEMA_VERSION

CONTENT_TYPE = "application/vnd.apache.arrow.stream"
ATTR_VERSION, ATTR_ID, ATTR_CONTENT_TYPE = "schema_version", "record_id", "content_type"
# Pub/Sub accepts 10 MB; a paper-preset record (100x709 + 150x33 + 25x768 floats) is about 380 kB.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

CORRUPT_MESSAGE = "corrupt_message"
OVERSIZED_MESSAGE = "oversized_message"
BAD_ATTRIBUTES = "bad_attributes"
UNKNOWN_VERSION = "unknown_schema_version"


class MessageError(ValueError):
    """A message that cannot be decoded; `kind` is the dead-letter error kind."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def encode_record(record: pa.RecordBatch, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[bytes, dict[str, str]]:
    """One-row batch -> (payload, attributes). Raises ValueError for a batch that is not one row or too large."""
    if record.num_rows != 1:
        raise ValueError(f"a message carries exactly one record, got {record.num_rows} rows")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, record.schema) as writer:
        writer.write_batch(record)
    data = sink.getvalue().to_pybytes()
    record_id = record.column("id")[0].as_py() if "id" in record.schema.names else None
    if len(data) > max_bytes:
        raise ValueError(f"record {record_id!r}: encoded message is {len(data)} bytes, over the limit {max_bytes}")
    attributes = {ATTR_VERSION: SCHEMA_VERSION, ATTR_CONTENT_TYPE: CONTENT_TYPE}
    if record_id is not None:
        attributes[ATTR_ID] = str(record_id)
    return data, attributes


def check_field_names(schema: pa.Schema) -> None:
    """Raise UnicodeDecodeError if a field name, at any depth, is not UTF-8 (IPC reading does not check names)."""

    def walk(field: pa.Field) -> None:
        field.name  # noqa: B018 - decoding the name is the check
        typ = field.type
        if hasattr(typ, "value_field"):
            walk(typ.value_field)
        elif pa.types.is_struct(typ):
            for i in range(typ.num_fields):
                walk(typ.field(i))

    for i in range(len(schema)):
        walk(schema.field(i))


def decode_message(data: bytes, attributes: dict[str, str] | None, max_bytes: int = MAX_MESSAGE_BYTES) -> pa.RecordBatch:
    """Payload + attributes -> one-row batch. Raises MessageError naming what is wrong."""
    attributes = attributes or {}
    record_id = attributes.get(ATTR_ID)
    if len(data) > max_bytes:
        raise MessageError(OVERSIZED_MESSAGE, f"record {record_id!r}: {len(data)} bytes, over the limit {max_bytes}")
    version = attributes.get(ATTR_VERSION)
    if version is None:
        raise MessageError(BAD_ATTRIBUTES, f"record {record_id!r}: attribute {ATTR_VERSION!r} absent")
    if version != SCHEMA_VERSION:
        raise MessageError(UNKNOWN_VERSION, f"record {record_id!r}: schema version {version!r}, expected {SCHEMA_VERSION!r}")
    content_type = attributes.get(ATTR_CONTENT_TYPE, CONTENT_TYPE)
    if content_type != CONTENT_TYPE:
        raise MessageError(BAD_ATTRIBUTES, f"record {record_id!r}: content type {content_type!r}, expected {CONTENT_TYPE!r}")
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        batches = list(reader)
        for b in batches:  # IPC reading trusts offsets and UTF-8; a corrupt payload must not reach the decoders
            b.validate(full=True)
        check_field_names(reader.schema)
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise MessageError(CORRUPT_MESSAGE, f"record {record_id!r}: not an Arrow IPC stream ({e})") from None
    rows = sum(b.num_rows for b in batches)
    if rows != 1:
        raise MessageError(CORRUPT_MESSAGE, f"record {record_id!r}: a message carries one record, got {rows}")
    batch = next(b for b in batches if b.num_rows)
    return batch.replace_schema_metadata({**(reader.schema.metadata or {})})
