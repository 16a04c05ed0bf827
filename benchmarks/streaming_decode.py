"""Streaming's per-record cost of decoding and formatting against batch mode's, at the same batch size.

    .venv/bin/python benchmarks/streaming_decode.py [--presets small,paper] [--batch 256] [--json out.json]

The same N synthetic records go through the job's own functions, without a runner and without the model (the
scores are fixed arrays: formatting does not look at their values):
  batch      the Parquet row groups of --batch records read from bytes (as the source reads them), decode_chunk
             (validation, canonical Arrow) + the handler's padding + prediction_table, per row group
  streaming  decode_messages on --batch Pub/Sub messages v1 (their bytes: grouped by Schema message, the group's
             RecordBatch messages joined buffer by buffer into one table (beam_pipeline/ipc_concat.py), validated
             together) + the handler's padding + prediction_table, per batch: what the job does since it batches
             messages before decoding
  reader     the same, with pyarrow's stream reader instead of the joining (as before it: ipc_splice.JOIN_FROM out
             of reach)
  per_record the old streaming path, one message at a time: decode_message_record + padding + prediction_table
             of a one-record batch (the issue measured 630 us a record for the table alone)
  json       outputs.to_messages: the prediction table as one JSON Pub/Sub message per row (streaming only)
Variants take turns (benchmarks/common.py: interleave); figures are medians over rounds. The headline,
`streaming_over_batch_<preset>`, is streaming's seconds per record over batch's (goal: at most 2).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import emit, environment, interleave, median, note, write_json  # noqa: E402
from beam_pipeline import ipc_splice, outputs  # noqa: E402
from beam_pipeline.decode import Decoder, as_message, decode_chunk, decode_message_record, decode_messages  # noqa: E402
from beam_pipeline.elements import ParquetChunk  # noqa: E402
from beam_pipeline.handler import ModelInfo, ScoredBatch, _empty_scores  # noqa: E402
from beam_pipeline.padding import Padder  # noqa: E402
from emmr import synth  # noqa: E402
from emmr.config import preset  # noqa: E402
from schemas.message import encode_record  # noqa: E402


def records(tag: str, n: int) -> pa.Table:
    config = preset(tag)
    return synth.generate(synth.SynthParams(records=n, seed=4, missing_rate=0.3), config.modalities, 0, n)


def measure(tag: str, n: int, batch: int, rounds: int, results: dict) -> dict:
    config = preset(tag)
    decoder = Decoder(config.modalities, config.num_classes, batch)
    columns = ["id", *config.modality_names, "label", "event_time"]
    padder = Padder(config.modalities)
    info = ModelInfo("bench", "cpu", "cpu", 0.0, tuple(config.label_names), tuple(config.modality_names))
    table = records(tag, n)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=batch)
    parquet = sink.getvalue()  # a file of row groups of --batch records, in memory
    messages = [as_message(*encode_record(table.slice(i, 1).to_batches()[0]), f"m{i}", 1_000_000 + i)
                for i in range(n)]

    def score_and_format(b) -> pa.Table:
        records = padder.pad([b.table])
        scores = _empty_scores(len(b), len(info.label_names))
        present = np.stack([records.lengths[m] > 0 for m in config.modality_names], axis=1)
        return outputs.prediction_table(ScoredBatch(b, scores, {}, info, 2_000_000, present))

    def batch_mode():  # each row group read from the Parquet bytes, as the source reads it, then decoded
        pf, out, first = pq.ParquetFile(pa.BufferReader(parquet)), [], 0
        for i in range(pf.num_row_groups):
            rows = pf.read_row_group(i, columns=columns)  # the job's columns only, as its source reads them
            batches, _ = decode_chunk(ParquetChunk("bench.parquet", first, rows), decoder)
            out += [score_and_format(b) for b in batches]
            first += rows.num_rows
        return out

    def streaming_mode():
        out = []
        for start in range(0, n, batch):
            b, _ = decode_messages(messages[start:start + batch], decoder)
            out.append(score_and_format(b))
        return out

    def reader_mode():
        ipc_splice.JOIN_FROM, before = sys.maxsize, ipc_splice.JOIN_FROM
        try:
            return streaming_mode()
        finally:
            ipc_splice.JOIN_FROM = before

    def per_record():
        return [score_and_format(decode_message_record(m.data, m.attributes, m.message_id, m.publish_time_us,
                                                       decoder)) for m in messages]

    tables = streaming_mode()
    assert set(columns) <= set(table.schema.names)
    assert sum(t.num_rows for t in tables) == n == sum(t.num_rows for t in batch_mode())

    def json_messages():
        return [outputs.to_messages(t) for t in tables]

    times = interleave({"batch": batch_mode, "streaming": streaming_mode, "reader": reader_mode,
                        "per_record": per_record, "json": json_messages}, rounds=rounds)
    per = {k: median(v) / n for k, v in times.items()}
    ratios = [s / b for s, b in zip(times["streaming"], times["batch"])]
    note(f"{tag}: {n} records, batch {batch}; us per record: batch {per['batch'] * 1e6:.1f}, streaming "
         f"{per['streaming'] * 1e6:.1f} (with pyarrow's reader {per['reader'] * 1e6:.1f}), one message at a time "
         f"{per['per_record'] * 1e6:.1f}; JSON messages {per['json'] * 1e6:.1f}")
    emit(f"batch_us_per_record_{tag}", per["batch"] * 1e6, results)
    emit(f"streaming_us_per_record_{tag}", per["streaming"] * 1e6, results)
    emit(f"reader_us_per_record_{tag}", per["reader"] * 1e6, results)
    emit(f"per_message_us_per_record_{tag}", per["per_record"] * 1e6, results)
    emit(f"json_us_per_record_{tag}", per["json"] * 1e6, results)
    emit(f"per_message_over_batch_{tag}", median([p / b for p, b in zip(times["per_record"], times["batch"])]),
         results)
    emit(f"reader_over_batch_{tag}", median([r / b for r, b in zip(times["reader"], times["batch"])]), results)
    emit(f"streaming_over_batch_{tag}", median(ratios), results)
    return {"records": n, "batch": batch, "seconds": times, "us_per_record": {k: v * 1e6 for k, v in per.items()},
            "streaming_over_batch": median(ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="small,paper", help="comma-separated presets (default small,paper)")
    p.add_argument("--records-small", type=int, default=2048, help="records, small preset (default 2048)")
    p.add_argument("--records-paper", type=int, default=512, help="records, paper preset (default 512)")
    p.add_argument("--batch", type=int, default=256, help="records per batch, both modes (default 256)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    results: dict = {}
    figures = {"environment": environment(), "args": vars(a)}
    for tag in [x for x in a.presets.split(",") if x]:
        figures[tag] = measure(tag, getattr(a, f"records_{tag}"), a.batch, a.rounds, results)
    if a.json:
        figures["results"] = results
        write_json(a.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
