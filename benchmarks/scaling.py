"""Scaling on paper: records/s per Dataflow GPU worker and the workers for 10 million records an hour, from
per-record costs measured here (host stages, CPU) and on the H200 (the model, docs/gpu/gpu.json).

Measured here, per record, with the job's own functions and one thread (median of --rounds, records of --preset):
  read       Parquet row groups of the job's columns, from bytes in memory (as the source reads them)
  decode     decode_chunk: validation, canonical Arrow, cutting into elements
  shuffle    a ScoringBatch pickled and unpickled (Dataflow's Reshuffle after decoding carries them), and its bytes
  pad        the handler's padding into reused buffers (model batches of --batch)
  format     prediction_table (and, for streaming outputs, one JSON message per prediction: to_messages)
The model's cost on a GPU comes from the H200 run of benchmarks/gpu.py (docs/gpu/gpu.json: measured). For the L4 and
the A100 it is ESTIMATED, not measured: the H200's per-record time is split into a matmul part (FLOPs per record over
the measured matmul rate, at the measured fraction of it) and the rest (attention softmax, masks, LayerNorm, copies,
launches: bound by memory bandwidth), and each part is scaled by the published peak of that machine (GPU_SPECS). A
worker's rate is the lesser of its GPU's and its host's (vCPUs x 1 / host seconds per record, at --host-efficiency
for Beam's own work and the other threads); workers for 10M records/hour at --target-utilisation.

  .venv/bin/python benchmarks/scaling.py [--preset paper] [--gpu-json docs/gpu/gpu.json] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.common import emit, environment, median, note, write_json  # noqa: E402
from beam_pipeline import outputs  # noqa: E402
from beam_pipeline.decode import ELEMENT_BYTES, Decoder, decode_chunk  # noqa: E402
from beam_pipeline.elements import ParquetChunk  # noqa: E402
from beam_pipeline.handler import ModelInfo, ScoredBatch, _empty_scores  # noqa: E402
from beam_pipeline.padding import Padder  # noqa: E402
from emmr import synth  # noqa: E402
from emmr.config import preset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RECORDS_PER_HOUR = 10_000_000
# Published peaks (vendor data sheets; dense, no sparsity): fp32 (no TF32) and bf16 tensor TFLOP/s, memory TB/s; the
# Dataflow machine type that carries one such GPU and its vCPUs. H200: the machine the H200 figures were measured on.
GPU_SPECS = {
    "H200": {"fp32_tflops": 67.0, "bf16_tflops": 989.0, "memory_tbps": 4.8, "machine": "(measured, lent)", "vcpus": 16},
    "A100 40GB": {"fp32_tflops": 19.5, "bf16_tflops": 312.0, "memory_tbps": 1.555, "machine": "a2-highgpu-1g",
                  "vcpus": 12},
    "L4": {"fp32_tflops": 30.3, "bf16_tflops": 121.0, "memory_tbps": 0.3, "machine": "g2-standard-8", "vcpus": 8},
}


def timed(fn, rounds: int) -> float:
    """Median seconds of `fn()` over `rounds` runs after one warm-up."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def host_costs(tag: str, n: int, batch: int, rounds: int) -> dict:
    """Seconds per record of each host stage, and bytes per record (Parquet, shuffled, padded)."""
    config = preset(tag)
    table = synth.generate(synth.SynthParams(records=n, seed=5, missing_rate=0.3), config.modalities, 0, n)
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(batch, n // 4))
    parquet = sink.getvalue()
    columns = ["id", *config.modality_names, "label", "event_time"]
    decoder = Decoder(config.modalities, config.num_classes, batch, ELEMENT_BYTES)
    padder = Padder(config.modalities)
    info = ModelInfo("bench", "cpu", "cpu", 0.0, tuple(config.label_names), tuple(config.modality_names))

    def read():
        pf = pq.ParquetFile(pa.BufferReader(parquet))
        return [pf.read_row_group(i, columns=columns) for i in range(pf.num_row_groups)]

    groups = read()
    decode = lambda: [b for g in groups for b in decode_chunk(ParquetChunk("bench.parquet", 0, g), decoder)[0]]  # noqa: E731
    elements = decode()
    shuffled = [pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL) for e in elements]
    shuffle = lambda: [pickle.loads(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL)) for e in elements]  # noqa: E731
    pieces = [e.table.slice(s, batch) for e in elements for s in range(0, len(e), batch)]
    pad = lambda: [padder.pad([t]) for t in pieces]  # noqa: E731
    scored = []
    for e in elements:
        padded = padder.pad([e.table])
        present = np.stack([padded.lengths[m] > 0 for m in config.modality_names], axis=1)
        scored.append(ScoredBatch(e, _empty_scores(len(e), len(info.label_names)), {}, info, 2_000_000, present))
    fmt = lambda: [outputs.prediction_table(s) for s in scored]  # noqa: E731
    tables = fmt()
    json_messages = lambda: [outputs.to_messages(t) for t in tables]  # noqa: E731
    per = {name: timed(fn, rounds) / n for name, fn in
           (("read", read), ("decode", decode), ("shuffle", shuffle), ("pad", pad), ("format", fmt),
            ("json", json_messages))}
    padded_bytes = sum(4 * m.max_len * m.dim for m in config.modalities)
    return {"seconds_per_record": per, "parquet_bytes_per_record": len(parquet) / n,
            "shuffle_bytes_per_record": sum(map(len, shuffled)) / n, "padded_bytes_per_record": padded_bytes,
            "records": n, "batch": batch}


def gpu_estimates(gpu: dict, dtype: str) -> dict:
    """Per-record model seconds on each GPU of GPU_SPECS from the H200's measured figures (see the docstring)."""
    r = gpu["results"]
    flops = r["flops_per_record"]
    measured_rate = r[f"gpu_best_records_per_s_{dtype}"]  # Scorer.score, numpy in and out, best batch size
    matmul_tflops = r[f"matmul_tflops_{dtype}"]  # measured on the H200
    h200 = GPU_SPECS["H200"]
    peak_key = "fp32_tflops" if dtype == "float32" else "bf16_tflops"
    matmul_efficiency = matmul_tflops / h200[peak_key]  # what a large matmul reaches of the published peak
    matmul_s = flops / (matmul_tflops * 1e12)  # at the measured matmul rate
    rest_s = max(1.0 / measured_rate - matmul_s, 0.0)
    out = {}
    for name, spec in GPU_SPECS.items():
        m = flops / (spec[peak_key] * 1e12 * matmul_efficiency)
        rest = rest_s * h200["memory_tbps"] / spec["memory_tbps"]
        out[name] = {"matmul_s": m, "rest_s": rest, "records_per_s": 1.0 / (m + rest),
                     "measured": name == "H200"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", help="records of this preset (default paper)")
    p.add_argument("--records", type=int, default=512, help="records timed per stage (default 512)")
    p.add_argument("--batch", type=int, default=256, help="model batch of the padding stage (default 256)")
    p.add_argument("--rounds", type=int, default=5, help="timed runs per stage (default 5)")
    p.add_argument("--gpu-json", default=os.path.join(ROOT, "docs", "gpu", "gpu.json"),
                   help="benchmarks/gpu.py's output on the H200 (default docs/gpu/gpu.json)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="the GPU's precision")
    p.add_argument("--host-efficiency", type=float, default=0.5,
                   help="share of a worker's vCPUs that do the job's host stages (default 0.5)")
    p.add_argument("--target-utilisation", type=float, default=0.7, help="planned load of a worker (default 0.7)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    results: dict = {}
    host = host_costs(a.preset, a.records, a.batch, a.rounds)
    per = host["seconds_per_record"]
    batch_host_s = per["read"] + per["decode"] + per["shuffle"] + per["pad"] + per["format"]
    note(f"{a.preset}: host stages, us per record (one thread, {a.records} records, batch {a.batch}, load "
         f"{os.getloadavg()[0]:.1f}): " + ", ".join(f"{k} {v * 1e6:.1f}" for k, v in per.items())
         + f"; batch path (read..format) {batch_host_s * 1e6:.0f}; bytes per record: Parquet "
         f"{host['parquet_bytes_per_record'] / 1e3:.0f} kB, shuffled {host['shuffle_bytes_per_record'] / 1e3:.0f} kB, "
         f"padded {host['padded_bytes_per_record'] / 1e3:.0f} kB")
    for k, v in per.items():
        emit(f"host_us_per_record_{k}", v * 1e6, results)
    emit("host_us_per_record_batch_path", batch_host_s * 1e6, results)
    emit("shuffle_kb_per_record", host["shuffle_bytes_per_record"] / 1e3, results)
    with open(a.gpu_json) as f:
        gpu = json.load(f)
    need = TARGET_RECORDS_PER_HOUR / 3600.0
    table = {}
    for name, est in gpu_estimates(gpu, a.dtype).items():
        spec = GPU_SPECS[name]
        host_rate = spec["vcpus"] * a.host_efficiency / batch_host_s
        worker = min(est["records_per_s"], host_rate)
        workers = math.ceil(need / (worker * a.target_utilisation))
        limit = "GPU" if est["records_per_s"] <= host_rate else "host CPUs"
        table[name] = {**est, "host_records_per_s": host_rate, "worker_records_per_s": worker, "limit": limit,
                       "workers_for_10M_per_hour": workers, "machine": spec["machine"]}
        note(f"{name} ({spec['machine']}, {spec['vcpus']} vCPUs): model {'measured' if est['measured'] else 'ESTIMATED'} "
             f"{est['records_per_s']:.0f} records/s ({a.dtype}; matmul {est['matmul_s'] * 1e6:.0f} us + rest "
             f"{est['rest_s'] * 1e6:.0f} us a record), host {host_rate:.0f} records/s -> worker {worker:.0f} records/s "
             f"({limit}); {workers} worker(s) for {need:.0f} records/s at {a.target_utilisation:.0%}")
        key = name.split()[0].lower()
        emit(f"worker_records_per_s_{key}", worker, results)
        emit(f"workers_for_10M_per_hour_{key}", workers, results)
    if a.json:
        write_json(a.json, {"environment": environment(), "args": vars(a), "host": host, "workers": table,
                            "gpu_source": os.path.relpath(a.gpu_json, ROOT), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
