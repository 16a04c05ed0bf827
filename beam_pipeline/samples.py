"""Deliberately bad input records, for `make demo` and the tests: each names the dead-letter kind it must get.

`write_bad_records(dir, modalities, num_classes)` writes `bad-records.parquet` (input record v1, one row group)
holding one valid record followed by records that break one rule each, and `not-parquet.parquet` (bytes that
are not Parquet). It returns the expected outcomes: `{id: [kind per record with that id]}` (None = a prediction),
and the unreadable file under its path.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipeline.dead_letters import NON_FINITE_OUTPUT, UNREADABLE_FILE
from schemas.arrow import input_schema
from schemas.modality import ModalitySpec
from schemas.validate import DUPLICATE_ID, LABEL_OUT_OF_RANGE, MISSING_ID, NO_MODALITY, NON_FINITE, TOO_LONG

BAD_FILE, UNREADABLE = "bad-records.parquet", "not-parquet.parquet"


def _sequence(rng: np.random.Generator, spec: ModalitySpec, steps: int, value: float | None = None) -> list:
    x = rng.normal(size=(steps, spec.dim)).astype(np.float32)
    if value is not None:
        x[:] = value
    return x.tolist()


def bad_records(modalities: tuple[ModalitySpec, ...], num_classes: int, seed: int = 0) -> tuple[pa.Table, dict]:
    """(table, {id: [expected outcome per record with that id]}): a dead-letter kind, or None for a prediction."""
    rng = np.random.default_rng(seed)
    first, last = modalities[0], modalities[-1]

    def record(rid: str, label: int | None = 0, **override) -> dict:
        row = {"id": rid, "label": label, "event_time": None}
        for m in modalities:
            row[m.name] = override.get(m.name, _sequence(rng, m, max(1, m.max_len // 2)))
        return row

    nan_seq = _sequence(rng, first, 2)
    nan_seq[1][0] = float("nan")
    rows = [
        (record("bad-duplicate"), None),  # valid: the first of two records with this id is scored
        (record("bad-duplicate"), DUPLICATE_ID),
        (record("bad-nan", **{first.name: nan_seq}), NON_FINITE),
        (record("bad-too-long", **{last.name: _sequence(rng, last, last.max_len + 1)}), TOO_LONG),
        (record("bad-all-missing", **{m.name: None for m in modalities}), NO_MODALITY),
        (record("bad-label", label=num_classes), LABEL_OUT_OF_RANGE),
        (record("", label=1), MISSING_ID),
        # Finite, so valid; but so large that the model's projection overflows: its output is not finite.
        (record("bad-huge", **{m.name: _sequence(rng, m, 1, 3e38) for m in modalities}), NON_FINITE_OUTPUT),
    ]
    schema = input_schema(modalities)
    table = pa.Table.from_pylist([r for r, _ in rows], schema=schema)
    expected: dict[str, list[str | None]] = {}
    for r, kind in rows:
        expected.setdefault(r["id"], []).append(kind)
    return table, expected


def write_bad_records(directory: str, modalities: tuple[ModalitySpec, ...], num_classes: int) -> dict:
    """Write the bad records and an unreadable file into `directory`; return {id or path: [expected kinds]}."""
    os.makedirs(directory, exist_ok=True)
    table, expected = bad_records(modalities, num_classes)
    pq.write_table(table, os.path.join(directory, BAD_FILE))
    unreadable = os.path.join(directory, UNREADABLE)
    with open(unreadable, "wb") as f:
        f.write(b"these bytes are not a Parquet file\n")
    expected[unreadable] = [UNREADABLE_FILE]
    return expected
