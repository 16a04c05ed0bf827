"""Output formatting, vectorised: ScoredBatch -> prediction v1 Arrow table; tables -> Pub/Sub JSON messages.

Files get prediction v1 Parquet (schemas.arrow.prediction_schema). Pub/Sub gets one JSON object per prediction,
what downstream consumers (dashboards, alerting, services) read without Arrow: the prediction v1 columns as
keys, timestamps in RFC 3339, with attributes `schema`=prediction, `schema_version`, `record_id` and
`content_type`=application/json.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from beam_pipeline.elements import NO_TIME
from beam_pipeline.handler import ScoredBatch
from beam_pipeline.padding import present
from schemas.arrow import SCHEMA_VERSION, prediction_schema

SCHEMA = prediction_schema()


def _names(index: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """Indices into `names` -> strings, null where the index is negative."""
    index = np.asarray(index, dtype=np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(index, mask=index < 0), pa.array(names, pa.string())).dictionary_decode()


def _times(us: np.ndarray) -> pa.Array:
    us = np.asarray(us, dtype=np.int64)
    return pa.array(us, pa.int64(), mask=us == NO_TIME).cast(SCHEMA.field("scored_at").type)


def prediction_table(scored: ScoredBatch) -> pa.Table:
    """The records of a ScoredBatch that have a prediction, as prediction v1 rows (input order)."""
    keep = scored.ok()
    b = scored.batch if keep.all() else scored.batch.take(np.flatnonzero(keep))
    s = scored.scores
    if scored.present is None:  # scored elsewhere than by the handler: read it off the records
        scored.present = present(scored.batch.table, scored.model.modality_names)
    probs = s.probabilities[keep].astype(np.float32, copy=False)
    label_index = s.label_index[keep]
    key_modality = s.key_modality[keep]
    label_pair = s.label_pair[keep]
    n, classes = probs.shape
    info = scored.model
    missing = ~scored.present[keep]  # (n, M)
    per_row = missing.sum(axis=1)
    missing_col = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)),
        _names(np.nonzero(missing)[1], info.modality_names), type=SCHEMA.field("missing").type)  # row-major order
    probs_col = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * classes, classes, dtype=np.int32)),
        pa.array(probs.reshape(-1), pa.float32()), type=SCHEMA.field("probabilities").type)
    if b.publish_time_us is None:
        latency = pa.nulls(n, pa.float64())
    else:
        latency = pa.array((scored.scored_at_us - b.publish_time_us) / 1e6, pa.float64())
    columns = [
        b.table.column("id").combine_chunks(),
        _names(label_index, info.label_names),
        pa.array(label_index.astype(np.int32)),
        probs_col,
        missing_col,
        pa.array(s.key_missing[keep].astype(bool)),
        pa.array(s.key_missing_score[keep].astype(np.float32)),
        _names(key_modality, info.modality_names),
        pa.array(s.label_full[keep].astype(np.int32)),
        pa.array(label_pair.astype(np.int32), mask=label_pair < 0),
        pa.array(s.ensemble_used[keep].astype(bool)),
        pa.array([info.version], pa.string()).take(np.zeros(n, dtype=np.int32)),
        _times(np.full(n, scored.scored_at_us, dtype=np.int64)),
        _times(b.event_time_us),
        latency,
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _json_default(v):
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TypeError(f"cannot encode {type(v).__name__} as JSON")


def to_messages(t: pa.Table) -> list[tuple[bytes, dict[str, str]]]:
    """Prediction v1 rows -> (JSON bytes, attributes), one message per prediction."""
    out = []
    for row in t.to_pylist():
        attributes = {"schema": "prediction", "schema_version": SCHEMA_VERSION, "record_id": row["id"],
                      "content_type": "application/json"}
        out.append((json.dumps(row, default=_json_default, sort_keys=True).encode(), attributes))
    return out
