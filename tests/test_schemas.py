"""The data contracts: every schema round-trips through Parquet and validates; bad records are named."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emmr.batch import from_arrow, modality_array
from schemas import (
    MessageError,
    ModalitySpec,
    RecordValidationError,
    dead_letter_schema,
    decode_message,
    encode_record,
    input_schema,
    prediction_schema,
    validate_input,
    validate_output,
)

MODS = (ModalitySpec("visual", 3, 4), ModalitySpec("acoustic", 2, 5), ModalitySpec("text", 4, 2))
NOW = datetime(2026, 11, 28, tzinfo=timezone.utc)


def make_input(n: int = 4, lengths=None, ids=None, labels=None, rng=None) -> pa.Table:
    rng = rng or np.random.default_rng(0)
    lengths = lengths or {m.name: [min(m.max_len, 1 + i % m.max_len) for i in range(n)] for m in MODS}
    cols = {"id": pa.array(ids or [f"r{i}" for i in range(n)], pa.string())}
    for m in MODS:
        x = rng.standard_normal((n, m.max_len, m.dim)).astype(np.float32)
        cols[m.name] = modality_array(x, np.asarray(lengths[m.name]), m)
    cols["label"] = pa.array(labels if labels is not None else [i % 3 for i in range(n)], pa.int64())
    cols["event_time"] = pa.array([NOW] * n, pa.timestamp("us", tz="UTC"))
    return pa.Table.from_pydict(cols, schema=input_schema(MODS))


def roundtrip(table: pa.Table, path) -> pa.Table:
    pq.write_table(table, path)
    return pq.read_table(path)


def test_input_schema_roundtrip(tmp_path):
    table = make_input(lengths={"visual": [4, 0, 1, 2], "acoustic": [5, 3, 0, 1], "text": [0, 2, 2, 1]})
    back = roundtrip(table, tmp_path / "in.parquet")
    assert back.schema.equals(input_schema(MODS), check_metadata=True)
    result = validate_input(back, MODS, num_classes=3)
    assert result.valid.all() and not result.errors
    batch = from_arrow(back, MODS)
    assert batch.lengths["visual"].tolist() == [4, 0, 1, 2]
    assert batch.present().tolist() == [[True, True, False], [False, True, True], [True, False, True], [True, True, True]]
    # the padded values are the written ones, zero beyond each length
    orig = table.column("visual").to_pylist()[0]
    np.testing.assert_array_equal(batch.features["visual"][0], np.asarray(orig, dtype=np.float32))
    assert not batch.features["visual"][2, 1:].any()


def test_prediction_and_dead_letter_schemas_roundtrip(tmp_path):
    pred = pa.Table.from_pylist(
        [{"id": "r1", "label": "positive", "label_index": 2, "probabilities": [0.1, 0.2, 0.7], "missing": ["text"],
          "key_missing": True, "key_missing_score": 0.8, "key_modality": "text", "label_full": 2, "label_pair": 1,
          "ensemble_used": True,
          "model_version": "abc", "scored_at": NOW, "event_time": None, "latency_s": None}],
        schema=prediction_schema(),
    )
    dead = pa.Table.from_pylist(
        [{"id": None, "source": "pubsub:17", "error_kind": "corrupt_message", "error": "not Arrow", "payload": b"\x00",
          "failed_at": NOW, "pipeline_version": "0.1.0"}],
        schema=dead_letter_schema(),
    )
    for table, schema, name in ((pred, prediction_schema(), "p"), (dead, dead_letter_schema(), "d")):
        back = roundtrip(table, tmp_path / f"{name}.parquet")
        assert back.schema.equals(schema, check_metadata=True)
        assert back.to_pylist() == table.to_pylist()
        assert validate_output(back, schema).valid.all()


def test_output_validation_names_record_and_field():
    table = pa.table({"id": ["r9"], "label": [None]}, schema=pa.schema([("id", pa.string()), ("label", pa.string())]))
    result = validate_output(table, prediction_schema())
    assert not result.valid[0]
    assert result.errors[0].record_id == "r9" and result.errors[0].field == "label"


def test_message_roundtrip():
    table = make_input(1)
    data, attributes = encode_record(table.to_batches()[0])
    assert attributes["record_id"] == "r0" and attributes["schema_version"] == "1"
    back = decode_message(data, attributes)
    assert back.schema.equals(input_schema(MODS), check_metadata=True)
    assert back.to_pylist() == table.to_pylist()
    assert validate_input(back, MODS, 3).valid.all()


@pytest.mark.parametrize(
    "data, attributes, kind",
    [
        (b"garbage", {"schema_version": "1", "record_id": "x"}, "corrupt_message"),
        (b"", {"schema_version": "1"}, "corrupt_message"),
        (b"x" * 100, {"schema_version": "2"}, "unknown_schema_version"),
        (b"x", {}, "bad_attributes"),
    ],
)
def test_bad_messages_are_named(data, attributes, kind):
    with pytest.raises(MessageError) as e:
        decode_message(data, attributes)
    assert e.value.kind == kind


def test_oversized_message():
    data, attributes = encode_record(make_input(1).to_batches()[0])
    with pytest.raises(MessageError) as e:
        decode_message(data, attributes, max_bytes=len(data) - 1)
    assert e.value.kind == "oversized_message" and "'r0'" in str(e.value)


def _replace(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, pa.field(name, array.type), array)


def test_invalid_records_name_id_and_field():
    table = make_input(6, ids=["a", "b", "c", "d", "", "b"], labels=[0, 1, 7, 2, 0, 0])
    text = table.column("text").to_pylist()
    text[0][0][1] = float("nan")  # record a: NaN in text
    table = _replace(table, "text", pa.array(text, table.schema.field("text").type))
    lengths = {"visual": [1, 1, 1, 0, 1, 1], "acoustic": [1, 1, 1, 0, 1, 1], "text": [1, 1, 1, 0, 1, 1]}
    table = table.set_column(1, table.schema.field("visual"), make_input(6, lengths=lengths).column("visual"))
    table = table.set_column(2, table.schema.field("acoustic"), make_input(6, lengths=lengths).column("acoustic"))
    text = table.column("text").to_pylist()
    text[3] = None  # record d: nothing at all
    table = _replace(table, "text", pa.array(text, table.schema.field("text").type))
    result = validate_input(table, MODS, num_classes=3)
    by_row = {e.row: e for e in result.errors}
    assert result.valid.tolist() == [False, True, False, False, False, False]
    assert (by_row[0].record_id, by_row[0].field, by_row[0].kind) == ("a", "text", "non_finite")
    assert (by_row[2].record_id, by_row[2].field, by_row[2].kind) == ("c", "label", "label_out_of_range")
    assert (by_row[3].record_id, by_row[3].kind) == ("d", "no_modality")
    assert (by_row[4].field, by_row[4].kind) == ("id", "missing_id")
    assert (by_row[5].record_id, by_row[5].kind) == ("b", "duplicate_id")
    with pytest.raises(RecordValidationError, match=r"record 'a' \(row 0\), field 'text'"):
        result.raise_if_invalid()


def test_wrong_dimension_too_long_and_types():
    long_seq = [[[0.0] * 3] * 5, [[0.0] * 3]]
    table = make_input(2)
    table = _replace(table, "visual", pa.array(long_seq, pa.list_(pa.list_(pa.float64()))))
    table = _replace(table, "text", pa.array([[[1.0] * 4], [[1.0] * 3]], pa.list_(pa.list_(pa.float32()))))
    result = validate_input(table, MODS, 3)
    assert [(e.record_id, e.field, e.kind) for e in result.errors] == [("r0", "visual", "too_long"), ("r1", "text", "wrong_dimension")]
    # a fixed-size column of the wrong size fails every row that has the modality
    table = _replace(make_input(2), "acoustic", pa.array([[[1.0, 2.0, 3.0]], None], pa.list_(pa.list_(pa.float32(), 3))))
    result = validate_input(table, MODS, 3)
    assert [(e.record_id, e.field, e.kind) for e in result.errors] == [("r0", "acoustic", "wrong_dimension")]
    # a non-list column, a missing column, a string label
    for change, field, kind in (
        (lambda t: _replace(t, "text", pa.array(["x", "y"])), "text", "wrong_type"),
        (lambda t: t.drop_columns(["acoustic"]), "acoustic", "missing_column"),
        (lambda t: _replace(t, "label", pa.array(["a", "b"])), "label", "wrong_type"),
        (lambda t: t.drop_columns(["id"]), "id", "missing_column"),
    ):
        result = validate_input(change(make_input(2)), MODS, 3)
        assert not result.valid.any()
        assert {(e.field, e.kind) for e in result.errors} == {(field, kind)}


def test_unknown_schema_version():
    table = make_input(2)
    table = table.replace_schema_metadata({b"emmr.schema": b"input", b"emmr.schema_version": b"2"})
    result = validate_input(table, MODS, 3)
    assert not result.valid.any() and result.errors[0].kind == "unknown_schema_version"


def test_modality_names_and_sizes_are_parameters():
    mods = (ModalitySpec("eeg", 7, 3), ModalitySpec("gaze", 2, 9))
    schema = input_schema(mods)
    assert schema.names == ["id", "eeg", "gaze", "label", "event_time"]
    assert schema.field("eeg").type.value_type.list_size == 7
    with pytest.raises(ValueError):
        ModalitySpec("label", 3, 3)
