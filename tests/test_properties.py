"""Property-based tests: arbitrary bytes and arbitrary records never crash decoding or validation, and never
vanish (every row is valid or has exactly one error naming it)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emmr.batch import from_arrow
from schemas import MessageError, ModalitySpec, decode_message, encode_record, input_schema, validate_input

MODS = (ModalitySpec("visual", 3, 4), ModalitySpec("text", 2, 3))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True), st.just(0.0))
frame = st.one_of(st.none(), st.lists(floats, min_size=0, max_size=5))
sequence = st.one_of(st.none(), st.lists(frame, min_size=0, max_size=6))
ids = st.one_of(st.none(), st.text(max_size=6))
labels = st.one_of(st.none(), st.integers(min_value=-3, max_value=5))


@st.composite
def records(draw):
    n = draw(st.integers(min_value=0, max_value=8))
    cols = {"id": pa.array([draw(ids) for _ in range(n)], pa.string())}
    for m in MODS:
        if draw(st.booleans()):  # the canonical layout, frames possibly null
            fixed_frame = st.one_of(st.none(), st.lists(floats, min_size=m.dim, max_size=m.dim))
            seqs = [draw(st.one_of(st.none(), st.lists(fixed_frame, max_size=6))) for _ in range(n)]
            cols[m.name] = pa.array(seqs, pa.list_(pa.list_(pa.float32(), m.dim)))
        else:
            inner = draw(st.sampled_from([pa.float32(), pa.float64()]))
            cols[m.name] = pa.array([draw(sequence) for _ in range(n)], pa.list_(pa.list_(inner)))
    if draw(st.booleans()):
        cols["label"] = pa.array([draw(labels) for _ in range(n)], pa.int64())
    if draw(st.booleans()):  # a column of the wrong type
        cols[draw(st.sampled_from(["visual", "text", "label"]))] = pa.array([draw(st.text(max_size=3)) for _ in range(n)])
    if draw(st.booleans()):
        cols.pop(draw(st.sampled_from(["id", "visual", "text"])), None)
    return pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int8())})


@FAST
@given(records())
def test_validation_never_crashes_and_accounts_for_every_row(table):
    result = validate_input(table, MODS, num_classes=3)
    assert len(result.valid) == table.num_rows
    assert sorted(e.row for e in result.errors) == list(np.flatnonzero(~result.valid))  # one error per invalid row
    for e in result.errors:
        assert e.field and e.kind and e.message
    good = table.filter(pa.array(result.valid)) if table.num_rows else table
    if good.num_rows:  # what passes validation pads without error, values intact
        batch = from_arrow(good, MODS)
        for m in MODS:
            assert batch.features[m.name].shape == (good.num_rows, m.max_len, m.dim)
            assert np.isfinite(batch.features[m.name]).all()


@FAST
@given(st.binary(max_size=2048), st.dictionaries(st.sampled_from(["schema_version", "record_id", "content_type", "x"]),
                                                  st.text(max_size=8), max_size=4))
def test_arbitrary_message_bytes_raise_only_message_error(data, attributes):
    try:
        batch = decode_message(data, attributes)
    except MessageError as e:
        assert e.kind
    else:
        assert batch.num_rows == 1


@FAST
@given(st.data())
def test_corrupted_valid_messages_never_crash(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    cols = {"id": pa.array(["r1"])}
    for m in MODS:
        x = rng.standard_normal((1, m.max_len * m.dim)).astype(np.float32).reshape(-1).tolist()
        cols[m.name] = pa.array([[x[i * m.dim:(i + 1) * m.dim] for i in range(m.max_len)]],
                                input_schema(MODS).field(m.name).type)
    payload, attributes = encode_record(pa.RecordBatch.from_pydict(cols))
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 8))):  # flip, cut or extend
        op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if op == "flip" and buf:
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[data.draw(st.integers(0, len(buf))):]
        else:
            buf += data.draw(st.binary(max_size=16))
    try:
        batch = decode_message(bytes(buf), attributes)
    except MessageError:
        return
    result = validate_input(batch, MODS, 3)  # decoded garbage still validates or is named, never crashes
    assert len(result.valid) == batch.num_rows == 1
    if result.valid.all():
        assert all(math.isfinite(v) for v in from_arrow(batch, MODS).features["visual"].reshape(-1))
