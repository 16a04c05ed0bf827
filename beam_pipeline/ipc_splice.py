"""A batch of Pub/Sub message v1 payloads read as ONE table, so that streaming decodes a batch of messages for
about what batch mode pays for a row group's rows (benchmarks/streaming_decode.py, docs/performance.md).

A message v1 payload is an Arrow IPC stream: a Schema message, one RecordBatch message (one row), and usually the
end-of-stream marker. Messages of one producer carry byte-identical Schema messages: `Splicer` groups the payloads
by theirs, and reads each group as one table. First by joining the RecordBatch messages' buffers directly
(beam_pipeline/ipc_concat.py: it checks every message's framing and metadata, all at once where they are laid out
alike, and takes the layouts the job's messages use); where it declines, each part is checked on its own
(`Splicer.plain`: one uncompressed RecordBatch message, nothing after the end-of-stream marker; read from the IPC
framing and the flatbuffer metadata, never decompressed) and the plain ones follow one copy of the schema in a
single stream that pyarrow reads in one call (`read_stream`), checked to give back one one-row batch per message.
Anything else, and any group that does not read back cleanly, is decoded message by message
(beam_pipeline/decode.py), which names exactly what is wrong with each.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from beam_pipeline.ipc_concat import concatenate
from schemas.message import check_field_names

CONTINUATION = 0xFFFFFFFF
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
SCHEMA, RECORD_BATCH = 1, 3  # Message.fbs MessageHeader
# Joining buffers (ipc_concat) costs about 0.3 ms a group plus 1 us a message, pyarrow's reader about 0.04 ms plus
# 8 us a message (small preset, benchmarks/streaming_decode.py): groups of fewer messages go to pyarrow.
JOIN_FROM = 40


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
    """Groups payloads by their Schema message (`add`), and reads each group as one table (`read`). Remembers the
    Schema messages it has checked, and tries the last one first (a batch's payloads mostly share one: a memcmp, no
    copy). What follows the Schema message, the payload's part, is checked per group: all at once where the parts
    are laid out alike (ipc_concat.py), else part by part (`plain`)."""

    def __init__(self):
        self.groups: dict[bytes, list[int]] = {}  # Schema message -> indexes of the payloads that carry it
        self.parts: list[memoryview | None] = []  # what follows each payload's Schema message (a view); None: none
        self._checked: dict[bytes, bool] = {}
        self._last: bytes | None = None

    def add(self, data: bytes) -> bool:
        """Take the next payload; True when it starts with a plain Schema message (a Schema message and no body),
        False otherwise (it is decoded alone)."""
        index = len(self.parts)
        self.parts.append(None)
        last = self._last
        if last is not None and data.startswith(last):
            schema = last
        else:
            checked = self._checked
            try:
                continuation, length = struct.unpack_from("<Ii", data, 0)
                schema = data[:8 + length]
                known = checked.get(schema)
                if known is None:
                    header = _message(data, 0)
                    known = checked[schema] = (header is not None and header[0] == SCHEMA and header[2] == 0
                                               and header[3] == len(schema) and len(data) > len(schema))
            except (struct.error, IndexError):
                return False
            if not known:
                return False
            self._last = schema
        self.parts[index] = memoryview(data)[len(schema):]
        self.groups.setdefault(schema, []).append(index)
        return True

    def plain(self, index: int) -> memoryview | None:
        """The RecordBatch message of payload `index` when its part is exactly one uncompressed RecordBatch message,
        possibly followed by the end-of-stream marker; else None."""
        part = self.parts[index]
        try:
            batch = _message(part, 0)
            if batch is None or batch[0] != RECORD_BATCH or batch[2] < 0 or _field(part, batch[1], 3) is not None:
                return None  # not a record batch, or a compressed one
            end = batch[3] + batch[2]
            if end > len(part) or not (end == len(part) or (len(part) - end == 8 and part[end:] == EOS)):
                return None
        except (struct.error, IndexError):
            return None
        return part[:end]

    def read(self, schema: bytes, columns: list[str] | None = None) -> tuple[pa.Table | None, list[int], list[int]]:
        """The group of `schema` -> (one table of its payloads' `columns`, a row per payload in order, with the
        stream's schema metadata, its names checked UTF-8 and its data fully validated, or None; the indexes of the
        payloads in it; the indexes of the others, to be decoded alone)."""
        indexes = self.groups[schema]
        if len(indexes) >= JOIN_FROM:
            table = _joined(schema, [self.parts[i] for i in indexes], columns)
            if table is not None:
                return table, indexes, []
        plain = {i: self.plain(i) for i in indexes}
        kept = [i for i in indexes if plain[i] is not None]
        table = read_stream(schema, [plain[i] for i in kept], columns) if kept else None
        if table is None:
            return None, [], indexes
        return table, kept, [i for i in indexes if plain[i] is None]


def _joined(schema: bytes, parts: list, columns: list[str] | None) -> pa.Table | None:
    """ipc_concat.concatenate of the parts; None where it declines, or the schema says big-endian (pyarrow's
    reader swaps those bytes; joining copies them as they are)."""
    try:
        endianness = _field(schema, _message(schema, 0)[1], 0)  # Schema.fbs: absent means little-endian
        if endianness is not None and struct.unpack_from("<h", schema, endianness)[0] != 0:
            return None
        full = pa.ipc.read_schema(pa.py_buffer(schema))
    except (pa.ArrowException, OSError, ValueError, struct.error, IndexError, TypeError):
        return None
    return concatenate(full, parts, columns)


def read_stream(schema: bytes, batches: list, columns: list[str] | None = None) -> pa.Table | None:
    """Plain RecordBatch messages of one schema read by pyarrow: one stream of the schema and the batches, read in
    one call; None unless it gives back one one-row batch per message, validating fully."""
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
