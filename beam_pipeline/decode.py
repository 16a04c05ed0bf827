"""Decoding and validation, as plain functions (no runner): Arrow in, ScoringBatches and dead letters out.

Batch mode validates a whole Parquet row group (or slice, see sources.py) at once (vectorised, schemas.validate),
keeps the valid rows in the canonical Arrow layout (beam_pipeline/padding.py) and cuts them into ScoringBatches
(zero-copy slices) of --batch_size records or, when more fit, of about `element_bytes` (ELEMENT_BYTES in the job):
Beam's cost is per element, so small records travel many to an element and the handler cuts model batches of
--batch_size from them. Streaming decodes a batch of messages v1 (batched before
decoding, beam_pipeline/pipeline.py): each message's own checks one by one, then its records validated together,
vectorised, into one ScoringBatch. Nothing is padded here: the model handler pads. Every invalid record becomes
exactly one dead letter naming its id, field and reason; valid ids that repeat across row groups or messages are
kept (validation sees one row group or one message; downstream can remove duplicates by id).

Beyond the contract's checks (schemas/validate.py), the job checks what would otherwise crash a later step or
reach the model silently changed:
- a string id whose bytes are not UTF-8 (Parquet readers do not check): `invalid_utf8`;
- an event time outside years 1..9999, which no output timestamp can hold: `event_time_out_of_range`;
- float64 values beyond float32's range, finite in the file but infinite once padded to float32: `non_finite`;
- a message whose Arrow IPC body is compressed: `corrupt_message` (a 4 MiB message could decompress to gigabytes;
  message v1 is uncompressed, so the payload bounds the decoded size).
`decode_chunk_safely` / `decode_messages_safely` are what the pipeline calls: any exception that still escapes
becomes dead letters of kind `decode_error` for the records at hand, never a failed bundle.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from beam_pipeline import dead_letters
from beam_pipeline.dead_letters import DeadLetter
from beam_pipeline.elements import NO_TIME, Message, ParquetChunk, ScoringBatch
from beam_pipeline.padding import canonical_table
from beam_pipeline.ipc_splice import Splicer
from schemas.arrow import SCHEMA_VERSION
from schemas.message import (ATTR_CONTENT_TYPE, ATTR_ID, ATTR_VERSION, CONTENT_TYPE, CORRUPT_MESSAGE, MAX_MESSAGE_BYTES,
                             MessageError, decode_message)
from schemas.modality import ModalitySpec
from schemas.validate import NON_FINITE, list_lengths, validate_input

log = logging.getLogger(__name__)
BAD_ATTRIBUTES = "bad_attributes"
# The microseconds since the epoch that a Python datetime (and so JSON, RFC 3339) can hold: years 1 to 9999.
MIN_TIME_US, MAX_TIME_US = -62_135_596_800_000_000, 253_402_300_799_999_999
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
# Batch mode: canonical Arrow bytes per element beyond --batch_size records. The DirectRunner spends about 1 ms on an
# element (benchmarks/io_ceiling.py), so 256 small-preset records (0.27 MB) per element cost more in Beam than in
# pyarrow; 8 MiB keeps that under 1 % and still spreads a 64 MiB read slice over several workers on Dataflow.
ELEMENT_BYTES = 8 << 20


@dataclass(frozen=True)
class Decoder:
    """What decoding needs from the model's configuration."""

    modalities: tuple[ModalitySpec, ...]
    num_classes: int
    batch_size: int = 256
    element_bytes: int = 0  # batch mode: records per element up to this many bytes, never under batch_size

    def element_rows(self, t: pa.Table) -> int:
        """Records per ScoringBatch cut from the canonical table `t`."""
        if not self.element_bytes or not t.num_rows:
            return self.batch_size
        return max(self.batch_size, int(self.element_bytes // max(1.0, t.nbytes / t.num_rows)))

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]


def event_times(t: pa.Table) -> np.ndarray:
    """(n,) int64 microseconds of `event_time`, NO_TIME where null or absent (validation checked the type)."""
    if "event_time" not in t.schema.names:
        return np.full(t.num_rows, NO_TIME, dtype=np.int64)
    col = t.column("event_time")
    col = col.cast(pa.timestamp("us", tz=col.type.tz), safe=False).cast(pa.int64())
    return col.fill_null(NO_TIME).to_numpy().astype(np.int64, copy=False)


# ------------------------------------------------------------------------------------------- the job's own checks


def _combined(col) -> pa.Array:
    """One array for a column; a column of one chunk is that chunk (combine_chunks would copy a slice's values)."""
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def invalid_utf8_rows(t: pa.Table) -> np.ndarray:
    """(n,) bool: rows whose `id` is a string that is not valid UTF-8."""
    bad = np.zeros(t.num_rows, dtype=bool)
    if "id" not in t.schema.names:
        return bad
    col = _combined(t.column("id"))
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return bad
    try:
        col.validate(full=True)
        return bad
    except pa.ArrowInvalid:
        pass
    raw = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())  # no UTF-8 check
    for r, b in enumerate(raw.to_pylist()):
        if b is not None:
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                bad[r] = True
    return bad


def readable_ids(t: pa.Table) -> list[str | None]:
    """What can be read of each row's id, for dead letters: strings as they are, bytes (a binary id column, or a
    string that is not UTF-8) with undecodable bytes escaped, other scalars (an integer id) as text; None where
    there is no id."""
    if "id" not in t.schema.names:
        return [None] * t.num_rows
    col = _combined(t.column("id"))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.large_binary())
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return [None if b is None else b.decode("utf-8", "backslashreplace") for b in col.to_pylist()]
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return [None if v is None else str(v) for v in col.to_pylist()]
    return [None] * t.num_rows


def event_time_out_of_range_rows(t: pa.Table) -> np.ndarray:
    """(n,) bool: rows whose `event_time` (a timestamp, as validated) lies outside years 1..9999."""
    bad = np.zeros(t.num_rows, dtype=bool)
    if "event_time" not in t.schema.names or not t.num_rows:
        return bad
    col = _combined(t.column("event_time"))
    factor = _UNIT_US.get(col.type.unit)
    if factor is None:  # nanoseconds: int64 covers years 1677..2262 only, all in range
        return bad
    raw = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return (raw < MIN_TIME_US // factor) | (raw > MAX_TIME_US // factor)


def float32_overflow_rows(t: pa.Table, modalities: tuple[ModalitySpec, ...]) -> dict[str, np.ndarray]:
    """modality -> (n,) bool: valid rows holding a value that is finite but beyond float32's range (only float64
    columns can). Call on validated rows (no null frames, right dimensions)."""
    out = {}
    for m in modalities:
        if m.name not in t.schema.names:
            continue
        col = _combined(t.column(m.name))
        if not pa.types.is_float64(col.type.value_type.value_type):
            continue
        lengths = list_lengths(col)
        values = col.flatten().flatten().to_numpy(zero_copy_only=False)
        if not len(values):
            continue
        over = np.abs(values) > _FLOAT32_MAX
        if over.any():
            rows = np.repeat(np.arange(t.num_rows), lengths * m.dim)
            bad = np.zeros(t.num_rows, dtype=bool)
            bad[rows[over]] = True
            out[m.name] = bad
    return out


def post_validation_errors(t: pa.Table, d: Decoder) -> dict[int, tuple[str, str, str]]:
    """row -> (kind, field, message) for validated rows that the job's own checks reject (first one wins)."""
    errors: dict[int, tuple[str, str, str]] = {}
    for r in np.flatnonzero(event_time_out_of_range_rows(t)):
        errors.setdefault(int(r), (dead_letters.EVENT_TIME_OUT_OF_RANGE, "event_time", "outside years 1 to 9999"))
    for name, bad in float32_overflow_rows(t, d.modalities).items():
        for r in np.flatnonzero(bad):
            errors.setdefault(int(r), (NON_FINITE, name, "a value beyond float32's range (infinite once scored)"))
    return errors


def _u16(b: bytes, p: int) -> int:
    return struct.unpack_from("<H", b, p)[0]


def _u32(b: bytes, p: int) -> int:
    return struct.unpack_from("<I", b, p)[0]


def _field(b: bytes, table: int, i: int) -> int | None:
    """Flatbuffers: where field i of the table at `table` lies, or None when absent."""
    vtable = table - struct.unpack_from("<i", b, table)[0]
    if 4 + 2 * i + 2 > _u16(b, vtable):
        return None
    offset = _u16(b, vtable + 4 + 2 * i)
    return table + offset if offset else None


def _compressed(metadata: bytes) -> bool:
    """Whether an Arrow IPC message (its flatbuffer metadata: Message.fbs) has a compressed body: a RecordBatch,
    or a DictionaryBatch's RecordBatch, with its `compression` field (3) set."""
    root = _u32(metadata, 0)
    type_at, header_at = _field(metadata, root, 1), _field(metadata, root, 2)
    if type_at is None or header_at is None:
        return False
    header_type, header = metadata[type_at], header_at + _u32(metadata, header_at)
    if header_type == 2:  # DictionaryBatch { id, data: RecordBatch, isDelta }
        data_at = _field(metadata, header, 1)
        if data_at is None:
            return False
        header_type, header = 3, data_at + _u32(metadata, data_at)
    return header_type == 3 and _field(metadata, header, 3) is not None


def compressed_ipc(data: bytes) -> bool:
    """Whether an Arrow IPC stream has a compressed body anywhere (read from the metadata, without decompressing).
    Unparseable streams say False: decoding then names them corrupt."""
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
        while True:
            message = reader.read_next_message()
            if message is None:
                return False
            if message.type in ("record batch", "dictionary") and _compressed(message.metadata.to_pybytes()):
                return True
    except StopIteration:
        return False
    except (pa.ArrowException, OSError, struct.error, IndexError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- files


def _row_dead_letter(t: pa.Table, row: int, record_id: str | None, source: str, kind: str, message: str,
                     at: int) -> DeadLetter:
    try:
        payload = dead_letters.ipc_bytes(t.slice(row, 1))
    except (pa.ArrowException, ValueError):
        payload = None
    return DeadLetter(id=record_id, source=source, error_kind=kind, error=message, payload=payload, failed_at_us=at)


def _unread_dead_letter(chunk: ParquetChunk, at: int) -> DeadLetter:
    kind = chunk.kind or dead_letters.UNREADABLE_FILE
    if kind == dead_letters.UNREADABLE_FILE:
        return DeadLetter(None, chunk.path, kind, f"file {chunk.path}: cannot be read as Parquet: {chunk.error}", None,
                          at)
    return DeadLetter(None, f"{chunk.path}#row={chunk.first_row}", kind, f"file {chunk.path}: {chunk.error}", None, at)


def decode_chunk(chunk: ParquetChunk, d: Decoder) -> tuple[list[ScoringBatch], list[DeadLetter]]:
    """A Parquet row group -> (ScoringBatches of its valid rows, one dead letter per invalid row)."""
    at = dead_letters.now_us()
    if chunk.table is None:
        return [], [_unread_dead_letter(chunk, at)]
    t = chunk.table
    letters: list[DeadLetter] = []

    def source(row: int) -> str:
        return f"{chunk.path}#row={chunk.first_row + row}"

    rows = np.arange(t.num_rows)  # the chunk's row of each row of `t`
    not_utf8 = invalid_utf8_rows(t)
    if not_utf8.any():
        ids = readable_ids(t)
        for r in np.flatnonzero(not_utf8):
            letters.append(_row_dead_letter(t, r, ids[r], source(r), dead_letters.INVALID_UTF8,
                                            f"record {ids[r]!r} (row {r}), field 'id': {dead_letters.INVALID_UTF8}: "
                                            "the id is not valid UTF-8", at))
        rows = np.flatnonzero(~not_utf8)
        t = t.take(pa.array(rows))
    result = validate_input(t, d.modalities, d.num_classes)
    fallback_ids = readable_ids(t) if result.errors else []
    for e in result.errors:
        if e.record_id is None and fallback_ids[e.row] is not None:  # name the record as far as it can be read
            e = replace(e, record_id=fallback_ids[e.row])
        letters.append(_row_dead_letter(t, e.row, e.record_id, source(int(rows[e.row])), e.kind,
                                        str(replace(e, row=int(rows[e.row]))), at))
    valid_rows = np.flatnonzero(result.valid)
    if not len(valid_rows):
        return [], letters
    good = t if len(valid_rows) == t.num_rows else t.take(pa.array(valid_rows))
    more = post_validation_errors(good, d)
    if more:
        ids = good.column("id").to_pylist()
        for r, (kind, field, message) in sorted(more.items()):
            letters.append(_row_dead_letter(good, r, ids[r], source(int(rows[valid_rows[r]])), kind,
                                            f"record {ids[r]!r} (row {int(rows[valid_rows[r]])}), field {field!r}: "
                                            f"{kind}: {message}", at))
        keep = np.array([r not in more for r in range(good.num_rows)], dtype=bool)
        valid_rows, good = valid_rows[keep], good.filter(pa.array(keep))
    chunk_rows = rows[valid_rows]
    good = canonical_table(good, d.modalities)
    times = event_times(good)
    batches, size = [], d.element_rows(good)
    for start in range(0, good.num_rows, size):
        piece = good.slice(start, size)  # zero-copy
        stop = start + piece.num_rows
        batches.append(ScoringBatch(table=piece, event_time_us=times[start:stop], publish_time_us=None,
                                    source=chunk.path, rows=chunk.first_row + chunk_rows[start:stop]))
    return batches, letters


def decode_chunk_safely(chunk: ParquetChunk, d: Decoder) -> tuple[list[ScoringBatch], list[DeadLetter]]:
    """decode_chunk; should it raise all the same, every row of the chunk becomes a `decode_error` dead letter."""
    try:
        return decode_chunk(chunk, d)
    except Exception as e:  # noqa: BLE001 - a bad input fails its records, never the job
        log.exception("decoding %s from row %d raised; its %d rows go to dead letters", chunk.path, chunk.first_row,
                      len(chunk))
        at = dead_letters.now_us()
        if chunk.table is None:
            return [], [DeadLetter(None, chunk.path, dead_letters.DECODE_ERROR, f"file {chunk.path}: {e!r}", None, at)]
        try:
            ids = readable_ids(chunk.table)
        except Exception:  # noqa: BLE001
            ids = [None] * len(chunk)
        return [], [_row_dead_letter(chunk.table, r, ids[r], f"{chunk.path}#row={chunk.first_row + r}",
                                     dead_letters.DECODE_ERROR, f"record {ids[r]!r} (row {r}): decoding raised {e!r}",
                                     at) for r in range(len(chunk))]


# ------------------------------------------------------------------------------------------- messages


def _screen(m: Message, at: int) -> pa.RecordBatch | DeadLetter:
    """One message's own checks (size, compression, IPC, attributes): its one-row record batch, or its dead letter."""
    data, attributes = m.data, m.attributes
    source = f"pubsub:{m.message_id}"
    claimed_id = attributes.get(ATTR_ID)
    if len(data) <= MAX_MESSAGE_BYTES and compressed_ipc(data):
        return DeadLetter(claimed_id, source, CORRUPT_MESSAGE,
                          f"record {claimed_id!r}: the Arrow IPC body is compressed; message v1 is uncompressed (a "
                          f"compressed body could decode to far more than the {MAX_MESSAGE_BYTES}-byte limit)",
                          data, at)
    try:
        return decode_message(data, attributes)
    except MessageError as e:
        return DeadLetter(claimed_id, source, e.kind, str(e), data, at)


def _attributes_ok(m: Message) -> bool:
    """The attribute and size checks of decode_message, passed (the common case, tested without exceptions)."""
    a = m.attributes
    return (len(m.data) <= MAX_MESSAGE_BYTES and a.get(ATTR_VERSION) == SCHEMA_VERSION
            and a.get(ATTR_CONTENT_TYPE, CONTENT_TYPE) == CONTENT_TYPE)


def _screen_all(messages: list[Message], at: int, columns: list[str]) -> tuple[list[tuple[pa.Table, list[Message]]],
                                                                             list[DeadLetter]]:
    """Messages -> (groups of one-row records sharing a schema, as tables with their messages; dead letters).

    Plain payloads of one schema are read together as one table (beam_pipeline/ipc_splice.py); the others, and any
    group that does not read back cleanly, one by one (`_screen`: exact reasons)."""
    splicer, added, one_by_one = Splicer(), [], []
    for m in messages:
        if _attributes_ok(m):
            added.append(m)
            if splicer.add(m.data):
                continue
        one_by_one.append(m)
    groups: list[tuple[pa.Table, list[Message]]] = []
    for schema in splicer.groups:
        t, read, rest = splicer.read(schema, columns)
        one_by_one += [added[i] for i in rest]
        if t is not None:
            groups.append((t, [added[i] for i in read]))
    letters: list[DeadLetter] = []
    alone: list[tuple[pa.Schema, list[pa.RecordBatch], list[Message]]] = []
    for m in one_by_one:
        screened = _screen(m, at)
        if isinstance(screened, DeadLetter):
            letters.append(screened)
            continue
        for schema, batches, members in alone:
            if schema.equals(screened.schema, check_metadata=True):
                batches.append(screened)
                members.append(m)
                break
        else:
            alone.append((screened.schema, [screened], [m]))
    groups += [(pa.Table.from_batches(batches), members) for _, batches, members in alone]
    return groups, letters


def decode_messages(messages: list[Message], d: Decoder) -> tuple[ScoringBatch | None, list[DeadLetter]]:
    """A batch of Pub/Sub messages v1 -> one ScoringBatch of their valid records (canonical Arrow, None when there
    is none), and one dead letter per message that cannot be scored.

    Each message's own checks (size, attributes, IPC, one row, no compression) come first; the plain payloads of
    one producer are read as one IPC stream; the records are then validated together, one vectorised pass per
    schema, so that a message costs about what a row of a Parquet row group costs. Ids repeated across messages
    are scored: each message is its own record."""
    at = dead_letters.now_us()
    groups, letters = _screen_all(messages, at, ["id", *d.modality_names, "label", "event_time"])
    tables, kept = [], []
    for t, members in groups:
        result = validate_input(t, d.modalities, d.num_classes, duplicates=False)
        readable = readable_ids(t) if result.errors else []
        for e in result.errors:
            m = members[e.row]
            # name the record as far as it can be read: its id (even of a wrong type), else the attribute's claim
            rid = next((i for i in (e.record_id, readable[e.row], m.attributes.get(ATTR_ID)) if i is not None), None)
            letters.append(DeadLetter(rid, f"pubsub:{m.message_id}", e.kind, f"record {rid!r} (message "
                                      f"{m.message_id}), field {e.field!r}: {e.kind}: {e.message}", m.data, at))
        rows = np.flatnonzero(result.valid)
        if not len(rows):
            continue
        if len(rows) < t.num_rows:
            t, members = t.take(pa.array(rows)), [members[r] for r in rows]
        ids = t.column("id").to_pylist()
        ok = np.ones(t.num_rows, dtype=bool)
        for r, (record_id, m) in enumerate(zip(ids, members)):
            claimed = m.attributes.get(ATTR_ID)
            if claimed is not None and claimed != record_id:
                ok[r] = False
                letters.append(DeadLetter(record_id, f"pubsub:{m.message_id}", BAD_ATTRIBUTES,
                                          f"record {record_id!r}: attribute {ATTR_ID!r} says {claimed!r}", m.data, at))
        for r, (kind, field, message) in sorted(post_validation_errors(t, d).items()):
            if ok[r]:
                ok[r] = False
                letters.append(DeadLetter(ids[r], f"pubsub:{members[r].message_id}", kind,
                                          f"record {ids[r]!r}, field {field!r}: {kind}: {message}", members[r].data,
                                          at))
        if not ok.all():
            t, members = t.filter(pa.array(ok)), [m for m, keep in zip(members, ok) if keep]
        if t.num_rows:
            tables.append(canonical_table(t, d.modalities))
            kept += members
    if not kept:
        return None, letters
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return ScoringBatch(table=table, event_time_us=event_times(table),
                        publish_time_us=np.array([m.publish_time_us for m in kept], dtype=np.int64), source="pubsub",
                        message_ids=np.array([m.message_id for m in kept], dtype=object)), letters


def _decode_error(m: Message, e: Exception) -> DeadLetter:
    claimed = m.attributes.get(ATTR_ID) if isinstance(m.attributes, dict) else None
    return DeadLetter(claimed, f"pubsub:{m.message_id}", dead_letters.DECODE_ERROR,
                      f"record {claimed!r}: decoding raised {e!r}", bytes(m.data or b""), dead_letters.now_us())


def decode_messages_safely(messages: list[Message], d: Decoder) -> tuple[list[ScoringBatch], list[DeadLetter]]:
    """decode_messages; should it raise all the same, each message is decoded alone, and a message that still
    raises becomes a `decode_error` dead letter (its neighbours are scored)."""
    try:
        batch, letters = decode_messages(messages, d)
        return ([batch] if batch is not None else []), letters
    except Exception:  # noqa: BLE001 - a bad message fails itself, never its batch or the job
        log.exception("decoding a batch of %d messages raised; decoding them one by one", len(messages))
    batches, letters = [], []
    for m in messages:
        try:
            batch, more = decode_messages([m], d)
        except Exception as e:  # noqa: BLE001
            log.exception("decoding message %s raised; it goes to dead letters", m.message_id)
            batch, more = None, [_decode_error(m, e)]
        batches += [batch] if batch is not None else []
        letters += more
    return batches, letters


def as_message(data: bytes | None, attributes: dict[str, str] | None, message_id: str | None,
               publish_time_us: int) -> Message:
    return Message(bytes(data or b""), dict(attributes or {}), str(message_id), int(publish_time_us))


def decode_message_record(data: bytes | None, attributes: dict[str, str] | None, message_id: str | None,
                          publish_time_us: int, d: Decoder) -> ScoringBatch | DeadLetter:
    """One Pub/Sub message v1 -> a one-record ScoringBatch, or its dead letter (decode_messages for one)."""
    batch, letters = decode_messages([as_message(data, attributes, message_id, publish_time_us)], d)
    return batch if batch is not None else letters[0]


def decode_message_safely(data: bytes | None, attributes: dict[str, str] | None, message_id: str | None,
                          publish_time_us: int, d: Decoder) -> ScoringBatch | DeadLetter:
    """decode_message_record; should it raise all the same, the message becomes a `decode_error` dead letter."""
    batches, letters = decode_messages_safely([as_message(data, attributes, message_id, publish_time_us)], d)
    return batches[0] if batches else letters[0]
