"""A corpus of bad inputs, through the real job: each kind ends as dead letters with a precise reason, the job
keeps running, and records in = predictions + dead letters.

Data-driven: FILE_CASES are Parquet files (one file per case, beside a valid record where the case allows one),
all scored by ONE batch run of `beam_pipeline.run.run` on the DirectRunner; MESSAGE_CASES are Pub/Sub messages,
all published (with valid ones) to ONE streaming job (`python -m beam_pipeline.run`, DirectRunner) reading the
real Pub/Sub emulator. Each case is then one parametrised test over that run's outputs: its dead letters (kind,
what the message names, id, source) and its predictions, exactly.

The model is the hand-set tiny model of tests/test_pipeline.py: modalities a (dim 3, at most 2 steps), b (dim 2, at
most 3 steps), c (dim 4, at most 1 step); classes neg, neu, pos.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import acks, dead_letters
from beam_pipeline.run import run
from schemas import message as message_format
from schemas import validate
from schemas.arrow import dead_letter_schema, input_schema, prediction_schema
from schemas.message import encode_record
from schemas.validate import validate_output
from servers import free_port, http_get
from test_pipeline import TINY, tiny_model  # noqa: F401 - the session fixture: a model with hand-set weights

RUNNER = "--runner=DirectRunner"  # named explicitly: the same run where Prism can be downloaded and where not
SCHEMA = input_schema(TINY.modalities)
A, B, C = TINY.modalities  # a: dim 3, max 2; b: dim 2, max 3; c: dim 4, max 1
FRAMES = {"a": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "b": [[1.0, -1.0]], "c": [[0.5, 0.5, 0.5, 0.5]]}


def record(rid, label=0, **override) -> dict:
    """A valid input v1 row for the tiny model, with fields overridden."""
    row = {"id": rid, "label": label, "event_time": None, **{k: [list(f) for f in v] for k, v in FRAMES.items()}}
    row.update(override)
    return row


def table(rows: list[dict], **types: pa.DataType) -> pa.Table:
    """Rows under the input v1 schema, with some columns' types replaced (or dropped, with type None)."""
    fields = []
    for f in SCHEMA:
        if f.name in types:
            if types[f.name] is not None:
                fields.append(pa.field(f.name, types[f.name], nullable=True))
        else:
            fields.append(f)
    for name, typ in types.items():
        if name not in SCHEMA.names:
            fields.append(pa.field(name, typ, nullable=True))
    schema = pa.schema(fields, metadata=SCHEMA.metadata)
    return pa.Table.from_pylist([{k: v for k, v in r.items() if k in schema.names} for r in rows], schema=schema)


VAR = pa.list_(pa.list_(pa.float32()))  # the accepted variable layout: every frame checked for its length
F64 = pa.list_(pa.list_(pa.float64(), 3))


# ------------------------------------------------------------------------------------------- file cases


@dataclass(frozen=True)
class Dead:
    """An expected dead letter: kind, a text its message must contain, the id it names, the file row (None: the
    whole file)."""

    kind: str
    says: str
    id: str | None
    row: int | None


@dataclass(frozen=True)
class FileCase:
    name: str
    build: Callable[[Path], None]  # writes the case's file at the given path
    dead: tuple[Dead, ...]
    predicted: tuple[str, ...] = ()


def write(t: pa.Table, **options) -> Callable[[Path], None]:
    return lambda path: pq.write_table(t, path, **options)


def write_bytes(make: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make())


def _valid_file_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table([record("t-1"), record("t-2"), record("t-3")]), sink)
    return sink.getvalue().to_pybytes()


def _not_utf8_ids() -> pa.Table:
    data, offsets = b"ok-utf8" + b"id-\xff\xfe", np.array([0, 7, 12], dtype=np.int32)
    ids = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    t = table([record("placeholder-1"), record("placeholder-2")])
    return t.set_column(0, SCHEMA.field("id"), ids)  # not validated on purpose: Parquet readers do not check either


def _corrupt_page(path: Path) -> None:
    """Three row groups, page CRCs written; a byte of the second row group's id page flipped."""
    t = table([record("crc-good"), record("crc-bad"), record("crc-after")])
    pq.write_table(t, path, row_group_size=1, compression="none", write_page_checksum=True)
    meta = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + meta.total_compressed_size - 2] ^= 0x5A  # in the last page's data, after its header
    path.write_bytes(bytes(data))


def _nullable_frames(path: Path) -> None:
    """apache/arrow#35692: a nullable fixed_size_list holding a null frame is written fine and cannot be read back."""
    nullable = pa.list_(pa.field("element", pa.list_(pa.field("element", pa.float32()), 3), nullable=True))
    frames = [record("nullable-good")["a"], [[1.0, 2.0, 3.0], None]]
    t = table([record("nullable-good"), record("nullable-bad")], a=nullable)
    t = t.set_column(t.schema.get_field_index("a"), pa.field("a", nullable), pa.array(frames, nullable))
    pq.write_table(t, path, row_group_size=1)


def _oversized_row(path: Path) -> None:
    """A row group whose one row holds 6 MB of `a` (500,000 frames of a modality with at most 2): over the 4 MiB a
    valid record of this model can take, so it is not read at all."""
    with pq.ParquetWriter(path, SCHEMA, use_dictionary=False, compression="snappy") as w:
        w.write_table(table([record("huge-good")]))
        frames = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(1_500_000, np.float32)), type=SCHEMA.field("a").type.value_type)
        a = pa.ListArray.from_arrays(pa.array([0, 500_000], pa.int32()), frames, type=SCHEMA.field("a").type)
        w.write_table(table([record("huge-bad")]).set_column(1, SCHEMA.field("a"), a))


def _event_time_beyond_9999() -> pa.Table:
    t = table([record("time-good"), record("time-bad")], event_time=pa.timestamp("s", tz="UTC"))
    times = pa.array([1_700_000_000, 10**13], pa.timestamp("s", tz="UTC"))  # the second: year 318857
    return t.set_column(t.schema.get_field_index("event_time"), pa.field("event_time", times.type), times)


def _schema_v2() -> pa.Table:
    t = table([record("v2-1"), record("v2-2")])
    return t.replace_schema_metadata({b"emmr.schema": b"input", b"emmr.schema_version": b"2"})


FILE_CASES = [
    FileCase("wrong_dimension_fixed",  # the column's type says 4 values per frame; the model wants 3
             write(table([record("dim4-bad", a=[[1.0, 2.0, 3.0, 4.0]]), record("dim4-no-a", a=None)],
                         a=pa.list_(pa.list_(pa.float32(), 4)))),
             (Dead("wrong_dimension", "field 'a'", "dim4-bad", 0),), ("dim4-no-a",)),
    FileCase("wrong_dimension_frame",  # variable layout: one frame of 2 values
             write(table([record("dimv-good"), record("dimv-bad", a=[[1.0, 2.0, 3.0], [1.0, 2.0]])], a=VAR)),
             (Dead("wrong_dimension", "field 'a'", "dimv-bad", 1),), ("dimv-good",)),
    FileCase("nan_value", write(table([record("nan-good"), record("nan-bad", b=[[float("nan"), 0.0]])])),
             (Dead("non_finite", "field 'b'", "nan-bad", 1),), ("nan-good",)),
    FileCase("inf_value", write(table([record("inf-bad", c=[[0.0, float("inf"), 0.0, 0.0]]), record("inf-good")])),
             (Dead("non_finite", "field 'c'", "inf-bad", 0),), ("inf-good",)),
    FileCase("negative_inf_float64", write(table([record("ninf-good"), record("ninf-bad", a=[[0.0, 0.0, -np.inf]])],
                                                 a=F64)),
             (Dead("non_finite", "field 'a'", "ninf-bad", 1),), ("ninf-good",)),
    FileCase("float64_beyond_float32",  # finite in the file, infinite once padded to float32
             write(table([record("f64-good"), record("f64-bad", a=[[1e300, 0.0, 0.0]])], a=F64)),
             (Dead("non_finite", "float32", "f64-bad", 1),), ("f64-good",)),
    FileCase("empty_id", write(table([record("empty-good"), record("")])),
             (Dead("missing_id", "field 'id'", "", 1),), ("empty-good",)),
    FileCase("null_id", write(table([record(None), record("null-good")], id=pa.string())),
             (Dead("missing_id", "field 'id'", None, 0),), ("null-good",)),
    FileCase("duplicate_id", write(table([record("dup"), record("other"), record("dup")])),
             (Dead("duplicate_id", "field 'id'", "dup", 2),), ("dup", "other")),
    FileCase("every_modality_null", write(table([record("null-all", a=None, b=None, c=None), record("null-all-good")])),
             (Dead("no_modality", "every modality is missing", "null-all", 0),), ("null-all-good",)),
    FileCase("every_modality_empty", write(table([record("empty-all-good"), record("empty-all", a=[], b=[], c=[])])),
             (Dead("no_modality", "field 'a,b,c'", "empty-all", 1),), ("empty-all-good",)),
    FileCase("longer_than_max_len",  # rejected, not truncated: see docs/reliability.md
             write(table([record("long-good"), record("long-bad", a=FRAMES["a"] + [[0.0, 0.0, 0.0]])])),
             (Dead("too_long", "field 'a'", "long-bad", 1),), ("long-good",)),
    FileCase("null_frame", write(table([record("nullframe-bad", b=[[1.0, 2.0], None]), record("nullframe-good")], b=VAR)),
             (Dead("null_frame", "field 'b'", "nullframe-bad", 0),), ("nullframe-good",)),
    FileCase("label_too_big", write(table([record("label3", label=3), record("label-good", label=2)])),
             (Dead("label_out_of_range", "field 'label'", "label3", 0),), ("label-good",)),
    FileCase("label_negative", write(table([record("label-neg", label=-1), record("label-null", label=None)])),
             (Dead("label_out_of_range", "field 'label'", "label-neg", 0),), ("label-null",)),
    FileCase("label_wrong_type", write(table([record("label-s1", label="pos"), record("label-s2", label="neg")],
                                             label=pa.string())),
             (Dead("wrong_type", "field 'label'", "label-s1", 0), Dead("wrong_type", "field 'label'", "label-s2", 1))),
    FileCase("modality_integers", write(table([record("int-b", b=[[1, 2]])], b=pa.list_(pa.list_(pa.int32())))),
             (Dead("wrong_type", "field 'b'", "int-b", 0),)),
    FileCase("modality_not_a_list", write(table([record("str-c", c="0.5,0.5,0.5,0.5")], c=pa.string())),
             (Dead("wrong_type", "field 'c'", "str-c", 0),)),
    FileCase("id_integer", write(table([record(7), record(8)], id=pa.int64())),
             (Dead("wrong_type", "field 'id'", "7", 0), Dead("wrong_type", "field 'id'", "8", 1))),
    FileCase("id_binary_not_utf8", write(table([record(b"\xff\xfe"), record(b"bin-ok")], id=pa.binary())),
             (Dead("wrong_type", "field 'id'", "\\xff\\xfe", 0), Dead("wrong_type", "field 'id'", "bin-ok", 1))),
    FileCase("id_string_not_utf8", write(_not_utf8_ids()),
             (Dead("invalid_utf8", "not valid UTF-8", "id-\\xff\\xfe", 1),), ("ok-utf8",)),
    FileCase("event_time_wrong_type", write(table([record("time-str", event_time="yesterday")], event_time=pa.string())),
             (Dead("wrong_type", "field 'event_time'", "time-str", 0),)),
    FileCase("event_time_beyond_year_9999", write(_event_time_beyond_9999()),
             (Dead("event_time_out_of_range", "field 'event_time'", "time-bad", 1),), ("time-good",)),
    FileCase("unknown_schema_version", write(_schema_v2()),
             (Dead("unknown_schema_version", "v2", "v2-1", 0), Dead("unknown_schema_version", "v2", "v2-2", 1))),
    FileCase("missing_modality_column", write(table([record("no-c-1"), record("no-c-2")], c=None)),
             (Dead("missing_column", "field 'c'", "no-c-1", 0), Dead("missing_column", "field 'c'", "no-c-2", 1))),
    FileCase("missing_id_column", write(table([record("x")], id=None)),
             (Dead("missing_column", "field 'id'", None, 0),)),
    FileCase("extra_columns",  # ignored by contract (the synthetic ground truth travels in them): scored
             write(table([record("extra", notes="hello", blob=b"\x00" * 1000)], notes=pa.string(), blob=pa.binary())),
             (), ("extra",)),
    FileCase("truncated_file", write_bytes(lambda: _valid_file_bytes()[: len(_valid_file_bytes()) // 2]),
             (Dead("unreadable_file", "magic bytes", None, None),)),
    FileCase("not_parquet", write_bytes(lambda: b'{"id": "json-record", "a": [[1, 2, 3]]}\n'),
             (Dead("unreadable_file", "cannot be read as Parquet", None, None),)),
    FileCase("empty_file", write_bytes(lambda: b""), ()),  # holds no record: Beam's file sources skip empty files
    FileCase("corrupt_page", _corrupt_page,
             (Dead("unreadable_row_group", "CRC", None, 1),), ("crc-good", "crc-after")),
    FileCase("nullable_frames_unreadable", _nullable_frames,
             (Dead("unreadable_row_group", "row group 1", None, 1),), ("nullable-good",)),
    FileCase("oversized_row_group", _oversized_row,
             (Dead("oversized_row_group", "over the limit", None, 1),), ("huge-good",)),
]
MESSAGE_CASES_MIN = 20  # the message corpus below; files + messages are well over 25 kinds


@pytest.fixture(scope="module")
def file_run(tiny_model, tmp_path_factory):  # noqa: F811
    """Every file case in one folder, scored by one batch run; returns its summary and outputs."""
    root = tmp_path_factory.mktemp("bad-files")
    (root / "in").mkdir()
    for case in FILE_CASES:
        case.build(root / "in" / f"{case.name}.parquet")
    started = time.monotonic()
    summary = run([RUNNER, "--input", str(root / "in" / "*.parquet"), "--model", tiny_model,
                   "--output", str(root / "out" / "predictions"), "--dead_letter", str(root / "out" / "dead"),
                   "--batch_size", "4"])
    predictions = pq.read_table(sorted(str(p) for p in (root / "out").glob("predictions-*.parquet")))
    dead = pq.read_table(sorted(str(p) for p in (root / "out").glob("dead-*.parquet")))
    return {"dir": root / "in", "summary": summary, "predictions": predictions, "dead": dead.to_pylist(),
            "seconds": time.monotonic() - started}


def test_the_corpus_covers_every_kind_an_input_can_cause():
    assert len(FILE_CASES) + len(MESSAGE_CASES) >= 25
    assert len({c.name for c in FILE_CASES}) == len(FILE_CASES) and len({c.name for c in MESSAGE_CASES}) == len(MESSAGE_CASES)
    kinds = {d.kind for c in FILE_CASES for d in c.dead} | {c.kind for c in MESSAGE_CASES if c.kind}
    contract = {validate.SCHEMA_VERSION_KIND, validate.MISSING_COLUMN, validate.WRONG_TYPE, validate.MISSING_ID,
                validate.DUPLICATE_ID, validate.WRONG_DIMENSION, validate.NULL_FRAME, validate.NON_FINITE,
                validate.TOO_LONG, validate.NO_MODALITY, validate.LABEL_OUT_OF_RANGE, message_format.CORRUPT_MESSAGE,
                message_format.OVERSIZED_MESSAGE, message_format.BAD_ATTRIBUTES, message_format.UNKNOWN_VERSION}
    faults = {dead_letters.DECODE_ERROR, dead_letters.INFERENCE_ERROR, dead_letters.NON_FINITE_OUTPUT}  # test_reliability
    assert kinds == contract | set(dead_letters.JOB_KINDS) - faults


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.name)
def test_bad_file_goes_to_dead_letters_with_its_reason(file_run, case):
    path = str(file_run["dir"] / f"{case.name}.parquet")
    mine = [d for d in file_run["dead"] if d["source"] == path or d["source"].startswith(path + "#row=")]
    got = sorted(((d["error_kind"], d["id"], None if d["source"] == path else int(d["source"].split("#row=")[1]))
                  for d in mine), key=str)
    assert got == sorted(((d.kind, d.id, d.row) for d in case.dead), key=str), mine
    for want in case.dead:
        letter = next(d for d in mine if d["error_kind"] == want.kind and d["id"] == want.id)
        assert want.says in letter["error"], letter["error"]
        if want.id:
            assert repr(want.id) in letter["error"] or want.id in letter["error"]  # the message names the record
        if want.row is not None and want.kind not in ("unreadable_row_group", "oversized_row_group"):
            back = pa.ipc.open_stream(letter["payload"]).read_all()  # the row itself, replayable as message v1
            assert back.num_rows == 1
    ids = file_run["predictions"].column("id").to_pylist()
    assert sorted(i for i in ids if i in case.predicted) == sorted(case.predicted)


def test_the_batch_run_conserves_every_record_and_keeps_going(file_run):
    s, predictions = file_run["summary"], file_run["predictions"]
    expected_dead = sum(len(c.dead) for c in FILE_CASES)
    expected_predicted = sum(len(c.predicted) for c in FILE_CASES)
    assert s.state.endswith("DONE") and s.conserved
    assert (s.records_in, s.predictions, s.dead_letters) == (
        expected_predicted + expected_dead, expected_predicted, expected_dead)
    assert len(file_run["dead"]) == expected_dead and predictions.num_rows == expected_predicted
    assert validate_output(predictions, prediction_schema()).errors == []
    assert validate_output(pa.Table.from_pylist(file_run["dead"], dead_letter_schema()), dead_letter_schema()).errors == []
    assert s.dead_letters_by_reason == dict(Counter(d.kind for c in FILE_CASES for d in c.dead))


# ------------------------------------------------------------------------------------------- message cases


@dataclass(frozen=True)
class MessageCase:
    name: str
    build: Callable[[], tuple[bytes, dict[str, str]]]
    kind: str | None  # None: scored
    says: str = ""
    id: str | None = None
    copies: int = 1


def message(t: pa.Table) -> tuple[bytes, dict[str, str]]:
    return encode_record(t.to_batches()[0])


def msg(rid, **override) -> tuple[bytes, dict[str, str]]:
    return message(table([record(rid, **override)]))


def ipc(t: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


ATTRS = {"schema_version": "1", "content_type": "application/vnd.apache.arrow.stream"}


def _with(data_attrs, **attributes):
    data, attrs = data_attrs
    attrs = {**attrs, **attributes}
    return data, {k: v for k, v in attrs.items() if v is not None}


def _flip_name(data: bytes, old: bytes, new: bytes) -> bytes:
    i = data.index(old)
    return data[:i] + new + data[i + len(new):]


def _not_utf8_id_ipc() -> bytes:
    t = _not_utf8_ids().slice(1, 1)
    return ipc(t)


def _bomb() -> bytes:
    """A zstd-compressed one-row record whose `a` holds 4 million zero floats: about 2 kB that would decode to 16 MB
    (and a 4 MiB one to gigabytes)."""
    frames = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * 1_333_334, np.float32)), type=SCHEMA.field("a").type.value_type)
    a = pa.ListArray.from_arrays(pa.array([0, 1_333_334], pa.int32()), frames, type=SCHEMA.field("a").type)
    return ipc(table([record("bomb")]).set_column(1, SCHEMA.field("a"), a), compression="zstd")


def _ipc_file_format() -> bytes:
    sink = pa.BufferOutputStream()
    t = table([record("file-format")])
    with pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


MESSAGE_CASES = [
    MessageCase("good", lambda: msg("m-good-1"), None, id="m-good-1"),
    MessageCase("good_missing_two_modalities", lambda: msg("m-good-2", a=None, c=None), None, id="m-good-2"),
    MessageCase("extra_column", lambda: message(table([record("m-extra", notes="x")], notes=pa.string())), None,
                id="m-extra"),
    MessageCase("same_record_twice", lambda: msg("m-twice"), None, id="m-twice", copies=2),  # both scored: dedupe by id
    MessageCase("random_bytes", lambda: (np.random.default_rng(7).bytes(64), dict(ATTRS)), "corrupt_message",
                "not an Arrow IPC stream"),
    MessageCase("truncated_ipc", lambda: (msg("m-cut")[0][:200], dict(ATTRS, record_id="m-cut")), "corrupt_message",
                "not an Arrow IPC stream", "m-cut"),
    MessageCase("empty_payload", lambda: (b"", dict(ATTRS, record_id="m-empty")), "corrupt_message", "", "m-empty"),
    MessageCase("json_payload", lambda: (b'{"id": "m-json", "a": [[1, 2, 3]]}', dict(ATTRS)), "corrupt_message",
                "not an Arrow IPC stream"),
    MessageCase("ipc_file_format", lambda: (_ipc_file_format(), dict(ATTRS)), "corrupt_message", "Arrow IPC"),
    MessageCase("two_records", lambda: (ipc(table([record("m-two-1"), record("m-two-2")])), dict(ATTRS)),
                "corrupt_message", "got 2"),
    MessageCase("zero_records", lambda: (ipc(table([])), dict(ATTRS)), "corrupt_message", "got 0"),
    MessageCase("compressed_body", lambda: (_bomb(), dict(ATTRS, record_id="bomb")), "corrupt_message", "compressed",
                "bomb"),
    MessageCase("id_not_utf8", lambda: (_not_utf8_id_ipc(), dict(ATTRS)), "corrupt_message", "UTF8"),
    MessageCase("field_name_not_utf8", lambda: (_flip_name(msg("m-name")[0], b"label", b"lab\xc8l"), dict(ATTRS)),
                "corrupt_message", "utf-8"),
    MessageCase("oversized", lambda: (msg("m-big")[0] + bytes(4 * 1024 * 1024), dict(ATTRS, record_id="m-big")),
                "oversized_message", "over the limit", "m-big"),
    MessageCase("no_schema_version", lambda: _with(msg("m-nover"), schema_version=None), "bad_attributes",
                "'schema_version' absent", "m-nover"),
    MessageCase("attribute_version_2", lambda: _with(msg("m-v2"), schema_version="2"), "unknown_schema_version",
                "'2'", "m-v2"),
    MessageCase("schema_metadata_version_2",
                lambda: (ipc(_schema_v2().slice(0, 1)), dict(ATTRS, record_id="v2-1")), "unknown_schema_version",
                "v2", "v2-1"),
    MessageCase("wrong_content_type", lambda: _with(msg("m-json-ct"), content_type="application/json"),
                "bad_attributes", "content type", "m-json-ct"),
    MessageCase("record_id_mismatch", lambda: _with(msg("m-real"), record_id="m-claimed"), "bad_attributes",
                "'m-claimed'", "m-real"),
    MessageCase("nan", lambda: msg("m-nan", a=[[float("nan"), 0.0, 0.0]]), "non_finite", "field 'a'", "m-nan"),
    MessageCase("wrong_dimension", lambda: message(table([record("m-dim", b=[[1.0, 2.0, 3.0]])], b=VAR)),
                "wrong_dimension", "field 'b'", "m-dim"),
    MessageCase("too_long", lambda: msg("m-long", c=[[0.0] * 4, [1.0] * 4]), "too_long", "field 'c'", "m-long"),
    MessageCase("no_modality", lambda: msg("m-none", a=None, b=[], c=None), "no_modality", "every modality", "m-none"),
    MessageCase("label_out_of_range", lambda: msg("m-label", label=7), "label_out_of_range", "field 'label'",
                "m-label"),
    MessageCase("empty_id", lambda: msg(""), "missing_id", "field 'id'", ""),
    MessageCase("event_time_beyond_year_9999", lambda: message(_event_time_beyond_9999().slice(1, 1)),
                "event_time_out_of_range", "field 'event_time'", "time-bad"),
]


def pull(subscription: str) -> list:
    """Pull and acknowledge what is there (a client without gRPC's 4 MiB receive limit: a dead letter keeps up to
    4 MiB of payload, in base64)."""
    client = acks.subscriber_client()
    try:
        response = client.pull(subscription=subscription, max_messages=50, timeout=5)
    except Exception:  # noqa: BLE001 - nothing there within the timeout
        return []
    if response.received_messages:
        client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    return [m.message for m in response.received_messages]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


@pytest.fixture(scope="module")
def message_run(pubsub_emulator, tiny_model, tmp_path_factory):  # noqa: F811
    """One streaming job on the emulator; every message case published to it (after checking that the quiet job
    already serves /metrics); returns {message id: (case, outputs)}."""
    em, work = pubsub_emulator, tmp_path_factory.mktemp("bad-messages")
    tag = uuid.uuid4().hex[:8]
    t_in, t_out, t_dead = f"bad-in-{tag}", f"bad-out-{tag}", f"bad-dead-{tag}"
    s_in = em.create_subscription(f"bad-in-sub-{tag}", t_in)
    s_out, s_dead = em.create_subscription(f"bad-out-sub-{tag}", t_out), em.create_subscription(f"bad-dead-sub-{tag}", t_dead)
    port = free_port()
    log = open(work / "job.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.run", RUNNER, "--streaming", "--input_subscription", s_in,
         "--output_topic", em.topic_path(t_out), "--dead_letter", em.topic_path(t_dead), "--model", tiny_model,
         "--batch_size", "8", "--batch_duration_s", "0.3", "--metrics_port", str(port), "--metrics_addr", "127.0.0.1"],
        env={**os.environ, **em.env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        started, quiet_metrics = time.monotonic(), (0, b"")
        while time.monotonic() - started < 120 and quiet_metrics[0] != 200:  # no message published yet
            assert proc.poll() is None, (work / "job.log").read_text()[-3000:]
            quiet_metrics = http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
            time.sleep(0.2)
        published = {}
        for case in MESSAGE_CASES:
            data, attributes = case.build()
            for _ in range(case.copies):
                published[em.publish(t_in, data, **attributes)] = case
        predictions, dead = [], []
        deadline = time.monotonic() + 120
        while len(predictions) + len(dead) < len(published) and time.monotonic() < deadline:
            assert proc.poll() is None, (work / "job.log").read_text()[-3000:]
            predictions += pull(s_out)
            dead += pull(s_dead)
        time.sleep(1.0)
        predictions += pull(s_out)  # nothing more than one output per message
        dead += pull(s_dead)
        alive = proc.poll() is None
    finally:
        _stop(proc)
        log.close()
    return {"published": published, "predictions": [json.loads(m.data) for m in predictions],
            "dead": [json.loads(m.data) for m in dead], "quiet_metrics": quiet_metrics, "alive": alive,
            "log": (work / "job.log").read_text()}


@pytest.mark.integration
def test_a_quiet_streaming_job_serves_metrics_before_its_first_message(message_run):
    status, body = message_run["quiet_metrics"]
    assert status == 200, message_run["log"][-3000:]
    assert b"emmr_input_records_total 0.0" in body  # declared at 0, scraped before any input


@pytest.mark.integration
@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda c: c.name)
def test_bad_message_goes_to_dead_letters_with_its_reason(message_run, case):
    ids = [m for m, c in message_run["published"].items() if c is case]
    letters = [d for d in message_run["dead"] if d["source"] in {f"pubsub:{m}" for m in ids}]
    if case.kind is None:
        assert letters == []
        assert [r["id"] for r in message_run["predictions"]].count(case.id) == case.copies
        return
    assert len(letters) == len(ids) == 1, letters
    [letter] = letters
    assert (letter["error_kind"], letter["id"]) == (case.kind, case.id), letter
    assert case.says in letter["error"], letter["error"]
    data, _ = case.build()
    assert letter["payload"] is not None and len(letter["payload"]) > 0 or data == b""


@pytest.mark.integration
def test_the_streaming_job_conserves_every_message_and_keeps_running(message_run):
    published, predictions, dead = message_run["published"], message_run["predictions"], message_run["dead"]
    assert message_run["alive"], message_run["log"][-3000:]
    assert len(predictions) + len(dead) == len(published)  # in = predictions + dead letters, none twice
    assert sorted(d["source"] for d in dead) == sorted(f"pubsub:{m}" for m, c in published.items() if c.kind)
    scored = Counter(r["id"] for r in predictions)
    assert scored == Counter({c.id: c.copies for c in MESSAGE_CASES if c.kind is None})
