"""The last lines of `make bench`: one `name: value` line per headline figure, read from the JSON that each
benchmark wrote in runs/bench/ during this run (a figure whose benchmark did not run is said to be missing)."""

from __future__ import annotations

import argparse
import json
import os

# (file, result key, printed name): the figures of issues #8, #13 and #14, in the order docs/performance.md gives them.
FIGURES = (
    ("model_throughput.json", "model_records_per_s_paper_cpu", "model_records_per_s_paper_cpu"),
    ("model_throughput.json", "model_records_per_s_small_cpu", "model_records_per_s_small_cpu"),
    ("model_throughput.json", "flagged_only_over_all_members_paper", "flagged_only_over_all_members_paper"),
    ("model_throughput.json", "new_over_old_paper", "new_over_old_paper"),
    ("model_throughput.json", "new_over_old_paper_trained", "new_over_old_paper_trained"),
    ("pipeline_efficiency.json", "pipeline_over_model_paper", "pipeline_over_model_paper"),
    ("pipeline_efficiency.json", "pipeline_over_model_small", "pipeline_over_model_small"),
    ("io_ceiling.json", "io_over_pyarrow", "io_over_pyarrow"),
    ("io_ceiling.json", "io_over_pyarrow_steady", "io_over_pyarrow_steady"),
    ("memory.json", "memory_10x_over_1x_paper", "memory_10x_over_1x_paper"),
    ("memory.json", "memory_10x_over_1x_small", "memory_10x_over_1x_small"),
    ("streaming_decode.json", "streaming_over_batch_paper", "streaming_over_batch_paper"),
    ("streaming_decode.json", "streaming_over_batch_small", "streaming_over_batch_small"),
    ("streaming_throughput.json", "streaming_records_per_s", "streaming_records_per_s"),
    ("streaming_throughput.json", "streaming_latency_p50_s", "streaming_latency_p50_s"),
    ("streaming_throughput.json", "streaming_latency_p99_s", "streaming_latency_p99_s"),
    ("scaling.json", "worker_records_per_s_l4", "worker_records_per_s_l4_estimated"),
    ("scaling.json", "workers_for_10M_per_hour_l4", "workers_for_10M_per_hour_l4_estimated"),
    ("scaling.json", "worker_records_per_s_a100", "worker_records_per_s_a100_estimated"),
    ("scaling.json", "workers_for_10M_per_hour_a100", "workers_for_10M_per_hour_a100_estimated"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", default="runs/bench", help="where the benchmarks wrote their JSON")
    args = p.parse_args(argv)
    cache: dict[str, dict] = {}
    for name, key, label in FIGURES:
        path = os.path.join(args.dir, name)
        if name not in cache:
            try:
                with open(path) as f:
                    cache[name] = json.load(f).get("results", {})
            except (OSError, ValueError):
                cache[name] = {}
        value = cache[name].get(key)
        print(f"{label}: {value:.4g}" if isinstance(value, (int, float)) else f"{label}: missing ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
