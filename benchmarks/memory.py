"""Peak memory of a batch run at 1x and 10x input: does the job's memory stay flat as the input grows?

For each preset (random weights; synthetic records, 30 % missing one modality, emmr.synth.write), the batch job
(`python -m beam_pipeline.run --runner=DirectRunner`, Parquet in, predictions and dead letters out) runs in its
own subprocess on N and on 10 N records, in turns (1x, 10x, then 10x, 1x, ...); the peak resident set size of
each run is the child's ru_maxrss (os.wait4, which reports that one child). Printed per preset: the peak RSS of
each size (MB, median over rounds) and memory_10x_over_1x_<preset>; the headline, last, is that ratio for
the last preset given (--presets; default small, then paper). Goal: flat, at most 1.2.

The 1x paper input (256 records, about 95 MB decoded) fills more than one read slice (beam_pipeline/sources.py
READ_BYTES, 64 MiB), so 10x reads more slices of the same size rather than fuller ones. In-process runners run the job
without its Reshuffle (on the DirectRunner a Reshuffle held the whole decoded input in memory: 1.86 before).

The DirectRunner runs the job in that one process (the default --direct_num_workers=1), so its peak RSS is
the job's. With --streaming-s S, the streaming job (small preset) also runs for S seconds reading the Pub/Sub emulator
while `emmr publish` sends --streaming-rate records/s; its RSS (/proc/PID/status VmRSS) is sampled every
second and the median of the last quarter of the samples over that of the first quarter is printed
(--streaming-window-s and --streaming-allowed-lateness-s set the job's windows and how long it keeps them).

  .venv/bin/python benchmarks/memory.py [--quick] [--json runs/bench/memory.json]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from benchmarks.common import emit, environment, median, note, write_json  # noqa: E402
from benchmarks.pipeline_common import (DEFAULT_WORK_DIR, ROOT, data_dir, describe_machine, job_argv,  # noqa: E402
                                        model_dir, stop_processes)


def peak_rss_mb(argv: list[str], log_path: str) -> tuple[float, float]:
    """Run the job in a subprocess; -> (its peak RSS in MB, wall seconds). Fails if the job fails."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", *argv], cwd=ROOT, stdout=log,
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
    rss: dict[str, list[float]] = {k: [] for k in sizes}
    secs: dict[str, list[float]] = {k: [] for k in sizes}
    for r in range(rounds):
        for size in (list(sizes) if r % 2 == 0 else list(sizes)[::-1]):
            mb, s = peak_rss_mb(argv[size], os.path.join(work_dir, f"memory-{tag}-{size}.log"))
            rss[size].append(mb)
            secs[size].append(s)
    note(f"{tag}: {records} and {10 * records} records, batch {batch_size}, {rounds} round(s); peak RSS MB "
         + ", ".join(f"{k} {[round(x) for x in v]}" for k, v in rss.items())
         + "; seconds " + ", ".join(f"{k} {median(v):.1f}" for k, v in secs.items()))
    fig = {"records": sizes, "peak_rss_mb": rss, "seconds": secs,
           "memory_10x_over_1x": median(rss["10x"]) / median(rss["1x"])}
    for v in sizes:
        emit(f"peak_rss_mb_{v}_{tag}", median(rss[v]), results)
    return fig


# ---------------------------------------------------------------------------------------------- streaming


def vm_rss_mb(pid: int) -> float:
    """The resident set size of a process now (VmRSS of /proc/PID/status), MB; nan once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def streaming(work_dir: str, seconds: float, rate: float, batch_size: int, results: dict,
              window_s: float = 5.0, allowed_lateness_s: float | None = None) -> dict:
    """The streaming job (small preset) reading a subscription of the Pub/Sub emulator (started the way
    tests/servers.py starts it) while `emmr publish` sends `rate` records/s for `seconds`; the job's RSS is
    sampled every second. -> RSS at the first and last quarter of the flow and their ratio. The job keeps each
    window's state until the window is `allowed_lateness_s` past its end (the job's default: a day)."""
    import math

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import servers  # tests/servers.py: free ports, the emulator jar, readiness checks

    java, jar = servers.require_binary("java"), servers.pubsub_emulator_jar()
    if jar is None:
        raise RuntimeError("the Pub/Sub emulator jar is not installed (scripts/install-test-deps.sh)")
    model = model_dir(work_dir, "small")
    data = data_dir(work_dir, "small", int(seconds * rate), seed=2)
    out, logs = os.path.join(work_dir, "out-memory-streaming"), os.path.join(work_dir, "streaming-logs")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(logs, exist_ok=True)
    server, port, _ = servers.start_server(
        "pubsub-emulator", lambda p: [java, "-jar", jar, f"--host={servers.LOOPBACK}", f"--port={p}"], "/",
        servers.Path(logs))
    job = publisher = None
    try:
        emu = servers.PubSubEmulator(host=f"{servers.LOOPBACK}:{port}", project=servers.PROJECT, process=server,
                                     startup_s=0.0)
        sub = emu.create_subscription("bench-in-sub", "bench-in")
        env = {**os.environ, **emu.env}
        argv = ["--runner=DirectRunner", "--streaming", "--input_subscription", sub, "--model", model,
                "--output", os.path.join(out, "predictions", "part"), "--dead_letter", os.path.join(out, "dead", "part"),
                "--window_s", f"{window_s:g}", "--batch_size", str(batch_size), "--torch_threads", "1", "--metrics_port", "0"]
        if allowed_lateness_s is not None:
            argv += ["--allowed_lateness_s", f"{allowed_lateness_s:g}"]
        job_log = open(os.path.join(logs, "job.log"), "w")
        job = subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", *argv], cwd=ROOT, env=env, stdout=job_log,
                               stderr=subprocess.STDOUT)
        time.sleep(10)  # the job subscribes and builds its graph
        pub_log = open(os.path.join(logs, "publish.log"), "w")
        publisher = subprocess.Popen([sys.executable, "-m", "emmr.cli", "publish", "--topic", "bench-in", "--data", data,
                                      "--rate", str(rate), "--project", servers.PROJECT], cwd=ROOT, env=env,
                                     stdout=pub_log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds + 5:
            if job.poll() is not None:
                raise RuntimeError(f"the streaming job exited {job.returncode}; see {logs}/job.log")
            samples.append((time.monotonic() - started, vm_rss_mb(job.pid)))
            time.sleep(1.0)
        publisher.wait(timeout=60)
    finally:
        stop_processes((publisher, job), grace_s=10)
        server.stop()
    rss = [r for _, r in samples if not math.isnan(r)]
    quarter = max(1, len(rss) // 4)
    first, last = median(rss[:quarter]), median(rss[-quarter:])
    import pyarrow.parquet as pq

    files = glob.glob(os.path.join(out, "predictions", "part-*.parquet"))
    written = sum(pq.read_metadata(f).num_rows for f in files)
    flow = [(t, r) for t, r in samples[quarter:] if not math.isnan(r)]  # after the first quarter: the growth, if any
    slope = 60.0 * statistics.linear_regression([t for t, _ in flow], [r for _, r in flow]).slope if len(flow) > 1 else 0.0
    note(f"streaming: {int(seconds * rate)} records published at {rate:g}/s over {seconds:g} s, batch {batch_size}, "
         f"windows of {window_s:g} s kept {allowed_lateness_s if allowed_lateness_s is not None else 'the default'} s "
         f"after their end; RSS grows {slope:.2f} MB/min after the first quarter; "
         f"RSS MB every ~5 s: {[round(r) for r in rss[::5]]}; {written} predictions in {len(files)} files when stopped "
         "(5 s after the last publication)")
    emit("streaming_predictions_written", written, results)
    emit("streaming_rss_mb_first_quarter", first, results)
    emit("streaming_rss_mb_last_quarter", last, results)
    emit("streaming_rss_mb_max", max(rss), results)
    emit("streaming_rss_mb_per_min_after_first_quarter", slope, results)
    emit("streaming_rss_last_over_first_quarter", last / first, results)
    return {"samples": samples, "first_quarter_mb": first, "last_quarter_mb": last, "mb_per_min": slope,
            "window_s": window_s, "allowed_lateness_s": allowed_lateness_s, "prediction_files": len(files),
            "predictions_written": written, "published": int(seconds * rate)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small preset only, fewer records (under a minute)")
    p.add_argument("--presets", default="small,paper", help="comma-separated presets (default small,paper)")
    p.add_argument("--records-small", type=int, default=3000, help="1x records, small preset (default 3000)")
    p.add_argument("--records-paper", type=int, default=256,
                   help="1x records, paper preset (default 256: more than one read slice, sources.READ_BYTES)")
    p.add_argument("--batch-small", type=int, default=256, help="batch size, small preset (default 256)")
    p.add_argument("--batch-paper", type=int, default=64, help="batch size, paper preset (default 64)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each size (default 1; peak RSS hardly varies)")
    p.add_argument("--streaming-s", type=float, default=0.0,
                   help="also run the streaming job this many seconds on the Pub/Sub emulator, sampling its RSS "
                        "(default 0: not run; needs java and the emulator jar)")
    p.add_argument("--streaming-rate", type=float, default=100.0, help="records/s published (default 100)")
    p.add_argument("--streaming-window-s", type=float, default=5.0, help="the streaming job's --window_s (default 5)")
    p.add_argument("--streaming-allowed-lateness-s", type=float, default=None,
                   help="the streaming job's --allowed_lateness_s (default: the job's own, a day)")
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
    if a.streaming_s > 0:
        figures["streaming"] = streaming(a.work_dir, a.streaming_s, a.streaming_rate, 64, results,
                                         a.streaming_window_s, a.streaming_allowed_lateness_s)
    for tag in presets[:-1]:
        emit(f"memory_10x_over_1x_{tag}", figures[tag]["memory_10x_over_1x"], results)
    emit(f"memory_10x_over_1x_{presets[-1]}", figures[presets[-1]]["memory_10x_over_1x"], results)
    if a.json:
        figures["results"] = results
        write_json(a.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
