"""Peak memory of a batch run at 1x and 10x input: does the job's memory stay flat as the input grows?

For each preset (random weights; synthetic records, 30 % missing one modality, emmr.synth.write), the batch job
(`python -m beam_pipeline.run --runner=DirectRunner`, Parquet in, predictions and dead letters out) runs in its
own subprocess on N and on 10 N records, in turns (1x, 10x, then 10x, 1x, ...); the peak resident set size of
each run is the child's ru_maxrss (os.wait4, which reports that one child). Printed per preset: the peak RSS of
each size (MB, median over rounds) and memory_10x_over_1x_<preset>; the headline, last, is that ratio for
the last preset given (--presets; default small, then paper). Goal: flat, at most 1.2.

Diagnostic (printed before the headline, as `..._no_reshuffle`): the same runs with the job's one
beam.Reshuffle ("Spread", after decoding) replaced by an identity Map in the child process. On the
DirectRunner a Reshuffle is a GroupByKey whose whole output the runner holds in memory before the next stage
runs, so with it every decoded (padded) record of the input is in memory at once.

The DirectRunner runs the job in that one process (the default --direct_num_workers=1), so its peak RSS is
the job's. A streaming run's memory over time is not measured here (see docs/performance.md).

  .venv/bin/python benchmarks/memory.py [--quick] [--json runs/bench/memory.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from benchmarks.common import emit, environment, median, note, write_json  # noqa: E402
from benchmarks.pipeline_common import DEFAULT_WORK_DIR, ROOT, data_dir, describe_machine, job_argv, model_dir  # noqa: E402


# The job with beam.Reshuffle replaced by an identity Map (the pipeline's only use of it is `"Spread" >>
# beam.Reshuffle()`; Beam's own transforms import Reshuffle from apache_beam.transforms.util, not this name).
NO_RESHUFFLE = """
import sys
import apache_beam as beam
class Identity(beam.PTransform):
    def expand(self, pcoll):
        return pcoll | beam.Map(lambda x: x)
beam.Reshuffle = Identity
from beam_pipeline import run
sys.exit(run.main(sys.argv[1:]))
"""


def peak_rss_mb(argv: list[str], log_path: str, reshuffle: bool = True) -> tuple[float, float]:
    """Run the job in a subprocess; -> (its peak RSS in MB, wall seconds). Fails if the job fails."""
    started = time.perf_counter()
    entry = ["-m", "beam_pipeline.run"] if reshuffle else ["-c", NO_RESHUFFLE]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *entry, *argv], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"the job exited {proc.returncode}; see {log_path}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss is in KiB on Linux


def measure(tag: str, work_dir: str, records: int, batch_size: int, rounds: int, results: dict) -> dict:
    model = model_dir(work_dir, tag)
    sizes = {"1x": records, "10x": 10 * records}
    argv = {k: job_argv(data_dir(work_dir, tag, n), model, os.path.join(work_dir, f"out-memory-{tag}-{k}"), batch_size, 1)
            for k, n in sizes.items()}
    variants = {k: (k, True) for k in sizes} | {f"{k}_no_reshuffle": (k, False) for k in sizes}
    rss: dict[str, list[float]] = {k: [] for k in variants}
    secs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            size, reshuffle = variants[v]
            mb, s = peak_rss_mb(argv[size], os.path.join(work_dir, f"memory-{tag}-{v}.log"), reshuffle)
            rss[v].append(mb)
            secs[v].append(s)
    note(f"{tag}: {records} and {10 * records} records, batch {batch_size}, {rounds} round(s); peak RSS MB "
         + ", ".join(f"{k} {[round(x) for x in v]}" for k, v in rss.items())
         + "; seconds " + ", ".join(f"{k} {median(v):.1f}" for k, v in secs.items()))
    fig = {"records": sizes, "peak_rss_mb": rss, "seconds": secs,
           "memory_10x_over_1x": median(rss["10x"]) / median(rss["1x"]),
           "memory_10x_over_1x_no_reshuffle": median(rss["10x_no_reshuffle"]) / median(rss["1x_no_reshuffle"])}
    for v in variants:
        emit(f"peak_rss_mb_{v}_{tag}", median(rss[v]), results)
    emit(f"memory_10x_over_1x_no_reshuffle_{tag}", fig["memory_10x_over_1x_no_reshuffle"], results)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small preset only, fewer records (under a minute)")
    p.add_argument("--presets", default="small,paper", help="comma-separated presets (default small,paper)")
    p.add_argument("--records-small", type=int, default=3000, help="1x records, small preset (default 3000)")
    p.add_argument("--records-paper", type=int, default=64, help="1x records, paper preset (default 64)")
    p.add_argument("--batch-small", type=int, default=256, help="batch size, small preset (default 256)")
    p.add_argument("--batch-paper", type=int, default=64, help="batch size, paper preset (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each size (default 1; peak RSS hardly varies)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="data, checkpoints, outputs (default runs/bench/pipeline)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    presets = [x for x in a.presets.split(",") if x]
    if a.quick:
        presets, a.records_small = ["small"], min(a.records_small, 1000)
    describe_machine()
    results: dict = {}
    figures = {"environment": environment(), "args": vars(a)}
    for tag in presets:
        records = getattr(a, f"records_{tag}")
        figures[tag] = measure(tag, a.work_dir, records, getattr(a, f"batch_{tag}"), a.rounds, results)
    for tag in presets[:-1]:
        emit(f"memory_10x_over_1x_{tag}", figures[tag]["memory_10x_over_1x"], results)
    emit(f"memory_10x_over_1x_{presets[-1]}", figures[presets[-1]]["memory_10x_over_1x"], results)
    if a.json:
        figures["results"] = results
        write_json(a.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
