"""Property-based tests (hypothesis) of the job's own decoding, beam_pipeline/decode.py: whatever table a Parquet
row group holds and whatever bytes a message carries, decoding never raises and every input row comes out as
exactly one valid record or exactly one dead letter (tests/test_properties.py does the same for schemas/ alone).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pipeline import ipc_concat, ipc_splice
from beam_pipeline.dead_letters import DeadLetter
from beam_pipeline.decode import (MAX_TIME_US, MIN_TIME_US, Decoder, as_message, compressed_ipc, decode_chunk,
                                  decode_message_record, decode_messages_safely)
from beam_pipeline.elements import NO_TIME, ParquetChunk, ScoringBatch
from beam_pipeline.ipc_concat import concatenate
from beam_pipeline.ipc_splice import Splicer, read_stream
from beam_pipeline.padding import Padder
from schemas import ModalitySpec, encode_record, input_schema

MODS = (ModalitySpec("visual", 3, 4), ModalitySpec("text", 2, 3))
DECODER = Decoder(MODS, num_classes=3, batch_size=3)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.one_of(st.floats(width=32), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e39, -1e300]))
id_bytes = st.one_of(st.none(), st.binary(max_size=6), st.text(max_size=5).map(str.encode))
labels = st.one_of(st.none(), st.integers(min_value=-3, max_value=5))
TIME_UNITS = ["s", "ms", "us", "ns"]


def _id_column(draw, n: int) -> pa.Array:
    kind = draw(st.sampled_from(["string", "raw-string", "binary", "int", "absent"]))
    if kind == "int":
        return pa.array([draw(st.integers(-5, 5)) for _ in range(n)], pa.int64())
    values = [draw(id_bytes) for _ in range(n)]
    if kind == "binary":
        return pa.array(values, pa.binary())
    if kind == "string":
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.string())
    # a string column holding whatever bytes (as a Parquet reader hands it over: UTF-8 not checked)
    offsets = np.concatenate([[0], np.cumsum([len(v or b"") for v in values])]).astype(np.int32)
    validity = pa.array([v is not None for v in values]).buffers()[1] if any(v is None for v in values) else None
    return pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(offsets.tobytes()),
                                                  pa.py_buffer(b"".join(v or b"" for v in values))])


def _modality(draw, m: ModalitySpec, n: int) -> pa.Array:
    layout = draw(st.sampled_from(["fixed", "fixed64", "variable", "wrong-dim", "strings"]))
    if layout == "strings":
        return pa.array([draw(st.text(max_size=3)) for _ in range(n)])
    dim = m.dim + 1 if layout == "wrong-dim" else m.dim
    frame = st.lists(floats, min_size=dim, max_size=dim)
    if layout == "variable":
        frame = st.one_of(st.none(), st.lists(floats, max_size=dim + 1))
    sequences = [draw(st.one_of(st.none(), st.lists(frame, max_size=m.max_len + 1))) for _ in range(n)]
    value = pa.float64() if layout == "fixed64" else pa.float32()
    typ = pa.list_(pa.list_(value)) if layout == "variable" else pa.list_(pa.list_(value, dim))
    return pa.array(sequences, typ)


@st.composite
def row_groups(draw):
    """An arbitrary row group as the source reads it: any layout, type, id, label, event time, metadata."""
    n = draw(st.integers(min_value=0, max_value=7))
    cols = {}
    if draw(st.integers(0, 9)):  # rarely no id column
        cols["id"] = _id_column(draw, n)
    for m in MODS:
        if draw(st.integers(0, 9)):
            cols[m.name] = _modality(draw, m, n)
    if draw(st.booleans()):
        cols["label"] = (pa.array([draw(labels) for _ in range(n)], pa.int64()) if draw(st.integers(0, 4))
                         else pa.array([draw(st.text(max_size=2)) for _ in range(n)]))
    if draw(st.booleans()):
        unit = draw(st.sampled_from(TIME_UNITS))
        times = [draw(st.one_of(st.none(), st.integers(-2**63 + 1, 2**63 - 1), st.integers(-10**12, 10**12)))
                 for _ in range(n)]
        cols["event_time"] = pa.array(times, pa.timestamp(unit, tz=draw(st.sampled_from([None, "UTC"]))))
    if draw(st.booleans()):
        cols["extra"] = pa.array([draw(st.binary(max_size=4)) for _ in range(n)], pa.binary())
    if not cols:
        cols["nothing"] = pa.nulls(n)
    table = pa.table(cols)
    version = draw(st.sampled_from([None, b"1", b"2", b"\xff"]))
    if version is not None:
        table = table.replace_schema_metadata({b"emmr.schema": b"input", b"emmr.schema_version": version})
    return table


def _accounted_rows(batches, letters, path, first_row, n):
    """The rows each output names: [(row, "record" | dead-letter kind)], one per input row expected."""
    out = []
    for b in batches:
        assert isinstance(b, ScoringBatch) and 0 < len(b) <= DECODER.batch_size and b.source == path
        padded = Padder(MODS).pad([b.table])  # what the model handler makes of it
        for m in MODS:
            features = padded.features[m.name]
            assert features.shape == (len(b), m.max_len, m.dim) and np.isfinite(features).all()
        assert (b.event_time_us.shape, padded.labels.shape) == ((len(b),), (len(b),))
        known = b.event_time_us[b.event_time_us != NO_TIME]  # the outputs format them as datetimes (RFC 3339 in JSON)
        assert ((known >= MIN_TIME_US) & (known <= MAX_TIME_US)).all()
        out += [(int(r) - first_row, "record") for r in b.rows]
    for d in letters:
        assert isinstance(d, DeadLetter) and d.error_kind and d.error and d.source.startswith(f"{path}#row=")
        out.append((int(d.source.split("#row=")[1]) - first_row, d.error_kind))
    return out


@SETTINGS
@given(row_groups(), st.integers(min_value=0, max_value=10**6))
def test_decode_chunk_accounts_for_every_row_exactly_once(table, first_row):
    batches, letters = decode_chunk(ParquetChunk("gs://b/in/part.parquet", first_row, table), DECODER)
    rows = _accounted_rows(batches, letters, "gs://b/in/part.parquet", first_row, table.num_rows)
    assert sorted(r for r, _ in rows) == list(range(table.num_rows))  # every row once: scored or dead-lettered
    for d in letters:  # a dead letter carries its row, replayable, when the row could be encoded
        if d.payload is not None:
            assert pa.ipc.open_stream(d.payload).read_all().num_rows == 1


def test_decode_chunk_of_an_unreadable_part_is_one_dead_letter():
    for kind in ("unreadable_file", "unreadable_row_group", "oversized_row_group"):
        batches, letters = decode_chunk(ParquetChunk("f.parquet", 7, None, "why", kind=kind, rows=3), DECODER)
        assert batches == [] and [(d.error_kind, d.id) for d in letters] == [(kind, None)]


ATTRIBUTES = st.dictionaries(st.sampled_from(["schema_version", "record_id", "content_type", "other"]),
                             st.one_of(st.sampled_from(["1", "2", "application/vnd.apache.arrow.stream"]),
                                       st.text(max_size=6)), max_size=4)


@SETTINGS
@given(st.one_of(st.none(), st.binary(max_size=4096)), st.one_of(st.none(), ATTRIBUTES), st.text(max_size=8))
def test_arbitrary_message_bytes_decode_to_one_record_or_one_dead_letter(data, attributes, message_id):
    out = decode_message_record(data, attributes, message_id, 0, DECODER)
    assert isinstance(out, (ScoringBatch, DeadLetter))
    if isinstance(out, DeadLetter):
        assert out.source == f"pubsub:{message_id}" and out.error_kind and out.payload == (data or b"")
    else:
        assert len(out) == 1
    assert compressed_ipc(data or b"") in (True, False)


@SETTINGS
@given(row_groups(), st.data())
def test_any_row_group_as_messages_decodes_to_one_record_or_one_dead_letter(table, data):
    """Each row of an arbitrary table as a message (IPC, maybe compressed, maybe mangled)."""
    for r in range(table.num_rows):
        sink = pa.BufferOutputStream()
        compression = data.draw(st.sampled_from([None, None, "zstd", "lz4"]))
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
            w.write_table(table.slice(r, 1))
        payload = bytearray(sink.getvalue().to_pybytes())
        if data.draw(st.booleans()) and payload:  # flip a byte
            payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
        attributes = {"schema_version": "1", **data.draw(ATTRIBUTES)}
        out = decode_message_record(bytes(payload), attributes, f"m{r}", 1_000_000, DECODER)
        assert isinstance(out, (ScoringBatch, DeadLetter))
        if isinstance(out, ScoringBatch):
            assert len(out) == 1 and compression is None
            padded = Padder(MODS).pad([out.table])
            assert all(np.isfinite(padded.features[m.name]).all() for m in MODS)
        elif compression is not None and out.error_kind == "corrupt_message":
            pass  # a compressed body is refused (or the flip made it unreadable)


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4), st.integers(0, 2**16))
def test_valid_records_round_trip_through_messages(present, seed):
    rng = np.random.default_rng(seed)
    for i, (has_visual, has_text) in enumerate(present):
        if not (has_visual or has_text):
            continue
        row = {"id": f"r{i}", "label": int(rng.integers(0, 3)), "event_time": None}
        for m, has in zip(MODS, (has_visual, has_text)):
            steps = int(rng.integers(1, m.max_len + 1))
            row[m.name] = rng.normal(size=(steps, m.dim)).astype(np.float32).tolist() if has else None
        t = pa.Table.from_pylist([row], schema=input_schema(MODS))
        out = decode_message_record(*encode_record(t.to_batches()[0]), "m", 0, DECODER)
        assert isinstance(out, ScoringBatch) and out.ids.tolist() == [f"r{i}"]
        padded = Padder(MODS).pad([out.table])
        for m in MODS:
            length = int(padded.lengths[m.name][0])
            want = np.asarray(row[m.name] or np.zeros((0, m.dim)), np.float32)
            np.testing.assert_array_equal(padded.features[m.name][0, :length], want)


@SETTINGS
@given(st.data())
def test_a_batch_of_messages_gives_each_message_one_record_or_one_dead_letter(data):
    """Streaming decodes messages in batches (validated together): whatever the mix of good, bad and garbage
    messages, each comes out once, and the good ones come out as they would alone."""
    messages, alone = [], {}
    for i in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["record", "table", "bytes"]))
        if kind == "bytes":
            payload, attributes = data.draw(st.binary(max_size=64)), {"schema_version": "1"}
        else:
            table = data.draw(row_groups()) if kind == "table" else pa.Table.from_pylist(
                [{"id": f"same-{i % 2}", "visual": [[0.5] * 3], "text": None, "label": 1, "event_time": None}],
                schema=input_schema(MODS))
            if not table.num_rows:
                continue
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table.slice(0, 1))
            payload, attributes = sink.getvalue().to_pybytes(), {"schema_version": "1"}
        messages.append(as_message(payload, attributes, f"m{i}", 1_000_000 + i))
        alone[f"m{i}"] = decode_message_record(payload, attributes, f"m{i}", 1_000_000 + i, DECODER)
    batches, letters = decode_messages_safely(messages, DECODER)
    scored = [str(m) for b in batches for m in b.message_ids]
    dead = [d.source.removeprefix("pubsub:") for d in letters]
    assert sorted(scored + dead) == sorted(m.message_id for m in messages)  # each once
    for mid in scored:
        assert isinstance(alone[mid], ScoringBatch)  # scored in the batch iff scored alone (ids may repeat)
    for d in letters:
        assert isinstance(alone[d.source.removeprefix("pubsub:")], DeadLetter)
        assert alone[d.source.removeprefix("pubsub:")].error_kind == d.error_kind


def _payload(table: pa.Table, row: int) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.slice(row, 1))
    return sink.getvalue().to_pybytes()


def _bits(t: pa.DataType) -> pa.DataType:
    """`t` with its floats as integers of their width (to compare NaNs bit for bit)."""
    if pa.types.is_floating(t):
        return {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}[t.bit_width]
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_bits(t.value_type)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_bits(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_bits(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_bits(f.type)) for f in t])
    return t


def _same(a: pa.Table, b: pa.Table) -> bool:
    """The same schema (metadata included) and values, NaNs compared by their bits."""
    if not a.schema.equals(b.schema, check_metadata=True):
        return False
    columns = [(x.combine_chunks(), y.combine_chunks()) for x, y in zip(a.columns, b.columns)]
    return all(x.view(_bits(x.type)).equals(y.view(_bits(y.type))) for x, y in columns)


def _both_ways(payloads: list[bytes], columns):
    """(ipc_concat's table, each message located alone; the same, laid out alike; the same, sliced message by
    message; pyarrow's) per schema group."""
    splicer = Splicer()
    for payload in payloads:
        splicer.add(payload)
    for schema, indexes in splicer.groups.items():
        parts, plain = [splicer.parts[i] for i in indexes], [splicer.plain(i) for i in indexes]
        try:
            full = pa.ipc.read_schema(pa.py_buffer(schema))
        except (pa.ArrowException, OSError):
            continue
        ipc_concat.COPY_MAX, before = 0, ipc_concat.COPY_MAX  # as large messages are: sliced one by one
        try:
            sliced = concatenate(full, parts, columns)
        finally:
            ipc_concat.COPY_MAX = before
        yield (concatenate(full, parts, columns, shortcut=False), concatenate(full, parts, columns), sliced,
               None if None in plain else read_stream(schema, plain, columns))


@SETTINGS
@given(row_groups(), st.data())
def test_joined_buffers_are_what_pyarrow_reads_or_nothing(table, data):
    """Streaming joins a batch's one-row RecordBatch messages without pyarrow's reader (beam_pipeline/ipc_concat.py):
    whatever the table, and with a byte flipped anywhere, it gives exactly the table pyarrow reads from the spliced
    stream, or declines (None: pyarrow reads them)."""
    payloads = [_payload(table, r) for r in range(table.num_rows)]
    flipped = bool(payloads) and data.draw(st.booleans())
    if flipped:
        i = data.draw(st.integers(0, len(payloads) - 1))
        payload = bytearray(payloads[i])
        payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
        payloads[i] = bytes(payload)
    columns = data.draw(st.sampled_from([None, ["id", "visual", "text", "label", "event_time"]]))
    for *ways, want in _both_ways(payloads, columns):
        for got in ways:
            if got is not None:
                assert want is not None and _same(got, want)


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=12),
       st.integers(0, 2**16))
def test_the_jobs_own_messages_are_joined_without_pyarrows_reader(present, seed):
    """Messages as schemas.encode_record makes them (modalities, label and event time each present or null) take
    the fast path, both ways, and give pyarrow's table."""
    rng = np.random.default_rng(seed)
    payloads = []
    for i, (has_visual, has_text, has_label) in enumerate(present):
        row = {"id": f"r{i}" * (i % 3 + 1), "label": int(rng.integers(0, 3)) if has_label else None,
               "event_time": None if has_label else 1_700_000_000_000_000 + i}
        for m, has in zip(MODS, (has_visual, has_text)):
            steps = int(rng.integers(1, m.max_len + 1))
            row[m.name] = rng.normal(size=(steps, m.dim)).astype(np.float32).tolist() if has else None
        t = pa.Table.from_pylist([row], schema=input_schema(MODS))
        payloads.append(encode_record(t.to_batches()[0])[0])
    [(*ways, want)] = list(_both_ways(payloads, None))
    assert want is not None and want.num_rows == len(present)
    assert all(got is not None and _same(got, want) for got in ways)


@SETTINGS
@given(st.data())
def test_a_batch_of_messages_decodes_alike_joined_or_read_by_pyarrow(data):
    """decode_messages joins the buffers of a group of JOIN_FROM messages or more, and reads smaller groups with
    pyarrow: with the threshold at 1 and out of reach, the same mix of messages gives the same records and dead
    letters."""
    messages = []
    for i in range(data.draw(st.integers(1, 10))):
        kind = data.draw(st.sampled_from(["record", "record", "table", "bytes"]))
        if kind == "bytes":
            payload = data.draw(st.binary(max_size=64))
        else:
            table = data.draw(row_groups()) if kind == "table" else pa.Table.from_pylist(
                [{"id": f"r{i}", "visual": [[0.5] * 3] * (i % 4 + 1), "text": None if i % 3 else [[1.0, 2.0]],
                  "label": i % 3, "event_time": None}], schema=input_schema(MODS))
            if not table.num_rows:
                continue
            payload = bytearray(_payload(table, 0))
            if data.draw(st.integers(0, 4)) == 0:  # now and then a byte flipped
                payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
            payload = bytes(payload)
        messages.append(as_message(payload, {"schema_version": "1"}, f"m{i}", 1_000_000 + i))
    outcomes = []
    for join_from in (1, 10**9):
        ipc_splice.JOIN_FROM, before = join_from, ipc_splice.JOIN_FROM
        try:
            batches, letters = decode_messages_safely(messages, DECODER)
        finally:
            ipc_splice.JOIN_FROM = before
        tables = [(b.table, b.message_ids.tolist()) for b in batches]
        outcomes.append((tables, sorted((d.source, d.error_kind) for d in letters)))
    (joined, joined_dead), (read, read_dead) = outcomes
    assert joined_dead == read_dead
    by_message = {m: t.slice(r, 1) for t, ids in read for r, m in enumerate(ids)}
    assert sorted(by_message) == sorted(m for _, ids in joined for m in ids)
    for t, ids in joined:
        for r, m in enumerate(ids):
            assert _same(t.slice(r, 1), by_message[m])
