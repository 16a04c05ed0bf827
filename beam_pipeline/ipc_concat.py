"""Plain one-row RecordBatch messages of one schema -> one table, by concatenating their buffers (numpy), without
pyarrow's reader making a RecordBatch of each: for small records that per-batch cost, about 11 us a message, was
most of streaming's decoding (benchmarks/streaming_decode.py, docs/performance.md).

`concatenate` reads each message's FieldNodes and Buffers from its flatbuffer metadata and joins, field by field,
what the messages hold: values and strings end to end, offsets rebased, top-level validity from each row's null
count. It takes only the layouts the job's messages use (fixed-width values, strings and binaries, lists, fixed-size
lists, structs; no nulls below the top level; offsets from 0, children exactly as long as their parent's offsets
end) and returns None for anything else, so that the caller reads those with pyarrow (ipc_splice.Splicer.read):
the result is always what pyarrow's reader gives, or nothing (tests/test_bad_inputs_properties.py checks it).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas.message import check_field_names

V4, V5 = 3, 4  # Schema.fbs MetadataVersion: the versions pyarrow reads
RECORD_BATCH = 3  # Message.fbs MessageHeader
EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker
SMALL = 64  # bytes a message up to which a buffer is gathered by numpy, not sliced message by message
COPY_MAX = 64 * 1024  # bytes a message up to which the messages are copied end to end for those gathers


class _Unsupported(Exception):
    pass


def _read(b, at: int, fmt: str) -> int:
    """The little-endian value at `at`, which must lie inside `b` (struct would count a negative one from the end)."""
    if at < 0 or at + struct.calcsize(fmt) > len(b):
        raise _Unsupported
    return struct.unpack_from(fmt, b, at)[0]


def _field(b, table: int, i: int) -> int | None:
    """Flatbuffers: the position of field i of the table at `table`, or None when absent."""
    vtable = table - _read(b, table, "<i")
    if 4 + 2 * i + 2 > _read(b, vtable, "<H"):
        return None
    offset = _read(b, vtable + 4 + 2 * i, "<H")
    return table + offset if offset else None


def _vector(b, at: int | None, count: int, itemsize: int) -> int:
    """Where the elements of the vector referred to at `at` begin; raises unless it has exactly `count` of `itemsize`
    bytes inside `b` (an absent vector has none)."""
    if at is None:
        if count:
            raise _Unsupported
        return -1
    vec = at + _read(b, at, "<I")
    if _read(b, vec, "<I") != count or vec + 4 + count * itemsize > len(b):
        raise _Unsupported
    return vec + 4


@functools.lru_cache(maxsize=1024)
def _kind(t: pa.DataType) -> tuple[str, int] | None:
    """(layout, buffers) of an Arrow type in the IPC body; None for a layout this module does not take."""
    if pa.types.is_boolean(t):
        return "bool", 2  # bit-packed values: skipped over, never joined
    if pa.types.is_null(t):
        return "null", 0
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return "binary32", 3
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return "binary64", 3
    if pa.types.is_list(t) and not pa.types.is_map(t):
        return "list32", 2
    if pa.types.is_large_list(t):
        return "list64", 2
    if pa.types.is_fixed_size_list(t):
        return "fsl", 1
    if pa.types.is_struct(t):
        return "struct", 1
    if isinstance(t, (pa.ExtensionType, pa.DictionaryType)) or pa.types.is_union(t) or pa.types.is_map(t):
        return None
    try:
        width = t.bit_width
    except ValueError:
        return None
    return ("fixed", 2) if width % 8 == 0 and width > 0 else None


NESTED = ("list32", "list64", "fsl", "struct")


@functools.lru_cache(maxsize=1024)
def _span(t: pa.DataType) -> tuple[int, int]:
    """(nodes, buffers) of a field of type `t` in the body, its children's included; raises _Unsupported for a
    layout this module does not take."""
    kind = _kind(t)
    if kind is None:
        raise _Unsupported
    nodes, buffers = 1, kind[1]
    for i in range(t.num_fields if kind[0] in NESTED else 0):
        child = _span(t.field(i).type)
        nodes, buffers = nodes + child[0], buffers + child[1]
    return nodes, buffers


@dataclass
class _Parsed:
    """The messages' metadata, as arrays over messages: node (length, nulls) [n, nodes, 2], buffer (offset,
    length) [n, buffers, 2], where each body starts in its message; the messages end to end in `joined` (from
    `starts`) when they are small, else None (large messages are sliced one by one: no copy of them all)."""
    parts: list
    joined: bytes | None
    starts: np.ndarray
    nodes: np.ndarray
    buffers: np.ndarray
    body_at: np.ndarray


@dataclass
class _Where:
    """Where, in each message (from its start), its body begins and its body length, nodes and buffers lie."""
    body_at: np.ndarray
    body_length_at: np.ndarray
    nodes_at: np.ndarray
    buffers_at: np.ndarray


def _locate(part, nodes_n: int, buffers_n: int) -> tuple[int, int, int, int]:
    """(body, body length, nodes, buffers) positions in one message: its framing and RecordBatch metadata
    (Message.fbs, Schema.fbs) checked: a RecordBatch of one row, uncompressed, with `nodes_n` nodes and `buffers_n`
    buffers, no variadic buffer counts (view types), a metadata version pyarrow reads."""
    if _read(part, 0, "<I") != 0xFFFFFFFF:
        raise _Unsupported
    body_at = 8 + _read(part, 4, "<i")
    root = 8 + _read(part, 8, "<I")
    version, header_type, header_at, body = (_field(part, root, i) for i in range(4))
    if None in (version, header_type, header_at, body) or _read(part, version, "<h") not in (V4, V5):
        raise _Unsupported
    if _read(part, header_type, "<B") != RECORD_BATCH:
        raise _Unsupported
    header = header_at + _read(part, header_at, "<I")
    length = _field(part, header, 0)
    if length is None or _read(part, length, "<q") != 1 or _field(part, header, 3) is not None:
        raise _Unsupported  # not one row, or a compressed body
    _vector(part, _field(part, header, 4), 0, 8)
    _read(part, body, "<q")
    return (body_at, body, _vector(part, _field(part, header, 1), nodes_n, 16),
            _vector(part, _field(part, header, 2), buffers_n, 16))


def _parse(parts: list, nodes_n: int, buffers_n: int, shortcut: bool = True) -> _Parsed:
    """The messages' nodes, buffers and bodies. Messages of one writer usually differ only in those values: then
    (`shortcut`) the first message is located, and the others are checked byte for byte against it (everything but
    the values, up to the body) and read at the same places; otherwise every message is located."""
    if shortcut:
        first = _locate(parts[0], nodes_n, buffers_n)
        meta, n = first[0], len(parts)
        values = [(first[2], 16 * nodes_n), (first[3], 16 * buffers_n), (first[1], 8)]
        heads = b"".join([p[:meta] for p in parts])
        if len(heads) == n * meta:
            head = np.frombuffer(heads, dtype=np.uint8).reshape(n, meta)
            differs = (head != head[0]).any(axis=0)
            for at, size in values:
                differs[at:at + size] = False
            if not differs.any():
                where = _Where(*(np.full(n, a, dtype=np.int64) for a in first))
                return _values(parts, where, nodes_n, buffers_n, head)
    located = np.array([_locate(p, nodes_n, buffers_n) for p in parts], dtype=np.int64).reshape(len(parts), 4)
    return _values(parts, _Where(*located.T), nodes_n, buffers_n, None)


def _values(parts: list, where: _Where, nodes_n: int, buffers_n: int, head: np.ndarray | None) -> _Parsed:
    n = len(parts)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    joined = b"".join(parts) if int(sizes.sum()) <= COPY_MAX * n else None
    if head is None:  # each message's own places, sliced
        def take(at: np.ndarray, size: int) -> np.ndarray:
            raw = b"".join([p[a:a + size] for p, a in zip(parts, at.tolist())])
            if len(raw) != n * size:
                raise _Unsupported
            return np.frombuffer(raw, dtype=np.uint8).reshape(n, size)
    else:  # every message's metadata, one a row, at the same places
        def take(at: np.ndarray, size: int) -> np.ndarray:
            return np.ascontiguousarray(head[:, at[0]:at[0] + size])
    nodes = take(where.nodes_at, 16 * nodes_n).view("<i8").reshape(n, nodes_n, 2)
    buffers = take(where.buffers_at, 16 * buffers_n).view("<i8").reshape(n, buffers_n, 2)
    body_length = take(where.body_length_at, 8).view("<i8")[:, 0]
    after = sizes - where.body_at - body_length  # nothing, or the end-of-stream marker
    if not np.isin(after, (0, 8)).all():
        raise _Unsupported
    marked = np.flatnonzero(after == 8)
    if joined is not None and len(marked):
        tails = np.frombuffer(joined, dtype=np.uint8)[(starts + sizes - 8)[marked][:, None] + np.arange(8)]
        if (tails != np.frombuffer(EOS, dtype=np.uint8)).any():
            raise _Unsupported
    elif any(bytes(parts[i][-8:]) != EOS for i in marked.tolist()):
        raise _Unsupported
    if (nodes < 0).any() or (buffers < 0).any() or (buffers[:, :, 0] + buffers[:, :, 1] > body_length[:, None]).any():
        raise _Unsupported
    if (buffers[:, :, 0] % 8).any():  # pyarrow's reader refuses a buffer off 8-byte alignment
        raise _Unsupported
    return _Parsed(parts, joined, starts, nodes, buffers, where.body_at)


class _Joiner:
    """Walks the schema in the body's order (fields depth first, each with its nodes and buffers) and joins the
    included fields' arrays."""

    def __init__(self, parsed: _Parsed):
        self.p = parsed
        self.bytes = None if parsed.joined is None else np.frombuffer(parsed.joined, dtype=np.uint8)
        self.node = self.buffer = 0

    def _take(self, j: int, lengths: np.ndarray) -> bytes:
        """The first `lengths[i]` bytes of buffer j of each message, end to end."""
        if (self.p.buffers[:, j, 1] < lengths).any():
            raise _Unsupported
        at = self.p.body_at + self.p.buffers[:, j, 0]  # in each message
        total = int(lengths.sum())
        if self.bytes is not None and total <= SMALL * len(lengths):  # a few bytes a message: one numpy gather
            ends = np.cumsum(lengths)
            return self.bytes[np.repeat(self.p.starts + at - (ends - lengths), lengths) + np.arange(total)].tobytes()
        return b"".join([p[a:a + n] for p, a, n in zip(self.p.parts, at.tolist(), lengths.tolist())])

    def _take_each(self, j: int, width: int) -> bytes:
        """The first `width` bytes of buffer j of each message, end to end (one numpy gather where it can)."""
        if self.bytes is None:
            return self._take(j, np.full(len(self.p.parts), width, dtype=np.int64))
        if (self.p.buffers[:, j, 1] < width).any():
            raise _Unsupported
        at = self.p.starts + self.p.body_at + self.p.buffers[:, j, 0]
        return self.bytes[at[:, None] + np.arange(width)].tobytes()

    def _offsets(self, j: int, lengths: np.ndarray, dtype: str, top: bool) -> tuple[pa.Buffer, np.ndarray]:
        """Buffer j as offsets of `lengths` rows per message, rebased end to end: (the joined offsets, each
        message's last offset). Each message's offsets start at 0."""
        width = np.dtype(dtype).itemsize
        if top:  # one row a message: two offsets each
            pairs = np.frombuffer(self._take_each(j, 2 * width), dtype=dtype).reshape(-1, 2)
            if pairs[:, 0].any():
                raise _Unsupported
            ends = pairs[:, 1].astype(np.int64)
            return pa.py_buffer(np.concatenate([[0], np.cumsum(ends)]).astype(dtype).tobytes()), ends
        offsets = np.frombuffer(self._take(j, (lengths + 1) * width), dtype=dtype).astype(np.int64)
        firsts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        ends = offsets[firsts + lengths]
        if offsets[firsts].any():
            raise _Unsupported
        keep = np.ones(len(offsets), dtype=bool)
        keep[firsts] = False
        shift = np.cumsum(ends) - ends
        joined = np.concatenate([[0], offsets[keep] + np.repeat(shift, lengths)]).astype(dtype)
        return pa.py_buffer(joined.tobytes()), ends

    def field(self, t: pa.DataType, top: bool, wanted: bool) -> pa.Array | None:
        kind = _kind(t)
        if kind is None:
            raise _Unsupported
        layout, buffers_n = kind
        k, j = self.node, self.buffer
        if not wanted:
            nodes_n, buffers_n = _span(t)
            self.node, self.buffer = k + nodes_n, j + buffers_n
            return None
        self.node, self.buffer = k + 1, j + buffers_n
        lengths, nulls = self.p.nodes[:, k, 0], self.p.nodes[:, k, 1]
        children = [t.field(i).type for i in range(t.num_fields)] if layout in NESTED else []
        if layout in ("bool", "null"):
            raise _Unsupported
        validity, null_count = None, int(nulls.sum())
        if top:
            if (lengths != 1).any() or (nulls > 1).any():
                raise _Unsupported
            if null_count:  # each null row's bit must say null, as pyarrow would read it
                bits = np.frombuffer(self._take(j, nulls), dtype=np.uint8)
                if (bits & 1).any():
                    raise _Unsupported
                validity = pa.py_buffer(np.packbits(nulls == 0, bitorder="little").tobytes())
        elif null_count:
            raise _Unsupported
        total = int(lengths.sum())
        if layout == "fixed":
            width = t.bit_width // 8
            values = self._take_each(j + 1, width) if top else self._take(j + 1, lengths * width)
            return pa.Array.from_buffers(t, total, [validity, pa.py_buffer(values)], null_count)
        if layout in ("binary32", "binary64"):
            offsets, ends = self._offsets(j + 1, lengths, "<i4" if layout == "binary32" else "<i8", top)
            return pa.Array.from_buffers(t, total, [validity, offsets, pa.py_buffer(self._take(j + 2, ends))],
                                         null_count)
        if layout in ("list32", "list64"):
            offsets, ends = self._offsets(j + 1, lengths, "<i4" if layout == "list32" else "<i8", top)
            child_lengths = self.p.nodes[:, self.node, 0]
            if (child_lengths != ends).any():
                raise _Unsupported
            return pa.Array.from_buffers(t, total, [validity, offsets], null_count,
                                         children=[self.field(children[0], False, True)])
        size = t.list_size if layout == "fsl" else 1
        parts = []
        for child in children:
            if (self.p.nodes[:, self.node, 0] != lengths * size).any():
                raise _Unsupported
            parts.append(self.field(child, False, True))
        return pa.Array.from_buffers(t, total, [validity], null_count, children=parts)


def concatenate(schema: pa.Schema, parts: list, columns: list[str] | None = None,
                shortcut: bool = True) -> pa.Table | None:
    """RecordBatch messages of `schema` (each: one uncompressed one-row RecordBatch message, possibly followed by
    the end-of-stream marker; checked here) -> one table of `columns` (all fields when None, in schema order, with
    the schema's metadata), a row per message; None when a message is not that, or it or the schema is not of a
    layout this module takes, or the result does not validate fully. `shortcut=False` locates each
    message's values on its own even when the messages are laid out alike (tests)."""
    if not parts:
        return None
    try:
        check_field_names(schema)  # IPC reading does not check names
        spans = [_span(f.type) for f in schema]
        counts = (sum(n for n, _ in spans), sum(b for _, b in spans))
        joiner, arrays, fields = _Joiner(_parse(parts, *counts, shortcut)), [], []
        for f in schema:
            wanted = columns is None or f.name in columns
            array = joiner.field(f.type, True, wanted)
            if wanted:
                arrays.append(array)
                fields.append(f)
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))
        table.validate(full=True)
        return table
    except (_Unsupported, IndexError, pa.ArrowException, ValueError, TypeError):  # UnicodeDecodeError too
        return None
