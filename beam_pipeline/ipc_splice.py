"""A batch of Pub/Sub message v1 payloads read as ONE Arrow IPC stream, so that streaming decodes a batch of
messages for about what batch mode pays for a row group's rows (benchmarks/streaming_decode.py).

A message v1 payload is an Arrow IPC stream: a Schema message, one RecordBatch message (one row), and usually the
end-of-stream marker. Messages of one producer carry byte-identical Schema messages, so the batch's RecordBatch
messages can follow one copy of the schema in a single stream: `read_spliced` reads it with one pyarrow call and
checks that it gave back one one-row batch per message, in order.

Only payloads of exactly that plain shape are spliced (`plain_parts`: no dictionary batch, no compressed body, no
second batch, nothing after the end-of-stream marker; read from the IPC framing and the flatbuffer metadata, never
decompressed). Anything else, and any group whose spliced stream does not read back cleanly, is decoded message by
message (beam_pipeline/decode.py), which names exactly what is wrong with each.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from schemas.message import check_field_names

CONTINUATION = 0xFFFFFFFF
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
SCHEMA, RECORD_BATCH = 1, 3  # Message.fbs MessageHeader


def _field(b: bytes, table: int, i: int) -> int | None:
    """Flatbuffers: the absolute position of field i of the table at `table`, or None when absent."""
    vtable = table - struct.unpack_from("<i", b, table)[0]
    if 4 + 2 * i + 2 > struct.unpack_from("<H", b, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", b, vtable + 4 + 2 * i)[0]
    return table + offset if offset else None


def _message(b: bytes, at: int) -> tuple[int, int, int, int] | None:
    """The IPC message starting at `at`: (header type, header table position, body length, end of its metadata),
    or None when the framing is not a message."""
    continuation, length = struct.unpack_from("<Ii", b, at)
    if continuation != CONTINUATION or length <= 0:
        return None
    meta = at + 8
    root = meta + struct.unpack_from("<I", b, meta)[0]
    type_at, header_at, body_at = _field(b, root, 1), _field(b, root, 2), _field(b, root, 3)
    if type_at is None or header_at is None:
        return None
    body = struct.unpack_from("<q", b, body_at)[0] if body_at is not None else 0
    return b[type_at], header_at + struct.unpack_from("<I", b, header_at)[0], body, meta + length


class Splicer:
    """Sorts payloads into plain ones, grouped by their Schema message, and the rest (`add`); remembers the Schema
    messages it has checked, and tries the last one first (a batch's payloads mostly share one: a memcmp, no copy)."""

    def __init__(self):
        self.groups: dict[bytes, list[int]] = {}  # Schema message -> indexes of the payloads that carry it
        self.parts: list[memoryview | None] = []  # each payload's RecordBatch message (a view), None if not plain
        self._checked: dict[bytes, bool] = {}
        self._last: bytes | None = None

    def add(self, data: bytes) -> bool:
        """Take the next payload; True when it is plain (one Schema message, one uncompressed RecordBatch message,
        possibly the end-of-stream marker: spliceable), False otherwise."""
        index = len(self.parts)
        self.parts.append(None)
        try:
            if self._last is not None and data.startswith(self._last):
                schema = self._last
            else:
                continuation, length = struct.unpack_from("<Ii", data, 0)
                schema = data[:8 + length]
                known = self._checked.get(schema)
                if known is None:
                    header = _message(data, 0)
                    known = self._checked[schema] = (header is not None and header[0] == SCHEMA and header[2] == 0
                                                     and header[3] == len(schema) and len(data) > len(schema))
                if not known:
                    return False
                self._last = schema
            at = len(schema)
            batch = _message(data, at)
            if batch is None or batch[0] != RECORD_BATCH or batch[2] < 0 or _field(data, batch[1], 3) is not None:
                return False  # not a record batch, or a compressed one
            end = batch[3] + batch[2]
            if end > len(data) or not (end == len(data) or (len(data) - end == 8 and data.endswith(EOS))):
                return False
        except (struct.error, IndexError):
            return False
        self.parts[index] = memoryview(data)[at:end]
        self.groups.setdefault(schema, []).append(index)
        return True


def plain_parts(data: bytes) -> tuple[bytes, bytes] | None:
    """(the Schema message, the RecordBatch message) of a plain payload (see Splicer.add), else None."""
    s = Splicer()
    if not s.add(data):
        return None
    return next(iter(s.groups)), bytes(s.parts[0])


def read_spliced(schema: bytes, batches: list, columns: list[str] | None = None) -> pa.Table | None:
    """One schema and the RecordBatch messages of several payloads -> one table (of `columns` where present, one
    chunk), a row per payload in order, with the stream's schema metadata, its names checked UTF-8 and its data
    fully validated; None if the stream does not read back as exactly one one-row batch per payload."""
    try:
        options = pa.ipc.IpcReadOptions(use_threads=False)  # one-row batches: threads cost more than they save
        if columns is not None:  # decode only the job's columns of each batch
            names = pa.ipc.read_schema(pa.py_buffer(schema)).names
            options = pa.ipc.IpcReadOptions(use_threads=False,
                                            included_fields=[i for i, n in enumerate(names) if n in columns])
        reader = pa.ipc.open_stream(pa.py_buffer(b"".join([schema, *batches, EOS])), options=options)
        read = list(reader)
        if len(read) != len(batches) or any(b.num_rows != 1 for b in read):
            return None
        check_field_names(reader.schema)
        table = pa.Table.from_batches(read, schema=reader.schema).combine_chunks()
        table.validate(full=True)  # IPC reading trusts offsets and UTF-8
        return table
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError):
        return None
