"""Streaming throughput and end-to-end latency on the Pub/Sub emulator, at a fixed publish rate.

The streaming job (`python -m beam_pipeline.run --streaming`, DirectRunner, one torch thread) reads a subscription of
the Pub/Sub emulator (started the way tests/servers.py starts it) and publishes one JSON prediction per record to a
topic (--output_topic) and dead letters to another; `emmr publish --rate R` sends synthetic records (30 % missing a
modality) for S seconds; a streaming-pull subscriber on the prediction topic notes when each prediction arrives.

For each prediction (its JSON carries `scored_at` and `latency_s` = scored_at - the input's publication time):
  end-to-end   arrival at the subscriber - the input message's publication time (the figure asked for)
  to_scored    the input's publication -> the model's scores (pull, batching wait, decoding, padding, the model)
  to_output    scored -> the prediction message published (formatting, JSON, Beam's publish)
  to_arrival   the prediction message published -> the subscriber has it (the emulator and the client)
Printed: records published, predictions and dead letters received, sustained records/s (predictions that arrived
per second from --warmup-s after the first publication to the last: below the publish rate when the job falls
behind), the latency quantiles of the records published in the steady part (after --warmup-s, before the last
--cooldown-s) and of every record, the mean of each part, the job's own model figures from its /metrics
(mean records per model call, mean seconds a call), and last the headline `streaming_latency_p99_s`. Every record must come out (predictions + dead letters = published).

  .venv/bin/python benchmarks/streaming_throughput.py [--rate 100] [--seconds 60] [--preset small] [--json PATH]

Needs java and the emulator jar (scripts/install-test-deps.sh, which `make test` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import numpy as np  # noqa: E402

from benchmarks.common import emit, environment, note, write_json  # noqa: E402
from benchmarks.pipeline_common import (DEFAULT_WORK_DIR, ROOT, data_dir, describe_machine, model_dir,  # noqa: E402
                                        stop_processes)


class Arrivals:
    """A streaming-pull subscriber that notes (arrival time, the message's publish time, its JSON) per message."""

    def __init__(self, subscriber, subscription: str):
        self.rows: list[tuple[float, float, dict]] = []
        self._lock = threading.Lock()
        self._future = subscriber.subscribe(subscription, callback=self._on_message)

    def _on_message(self, message) -> None:
        arrived = time.time()
        row = (arrived, message.publish_time.timestamp(), json.loads(message.data))
        message.ack()
        with self._lock:
            self.rows.append(row)

    def __len__(self) -> int:
        with self._lock:
            return len(self.rows)

    def stop(self) -> None:
        self._future.cancel()
        try:
            self._future.result(timeout=10)
        except Exception:  # noqa: BLE001 - cancelled
            pass


def scrape(port: int) -> dict[str, float]:
    """The job's /metrics as {series: value} (the sums and counts of its histograms among them)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def metric(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run(a, results: dict) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import servers  # tests/servers.py: free ports, the emulator jar, readiness checks

    java, jar = servers.require_binary("java"), servers.pubsub_emulator_jar()
    if jar is None:
        raise RuntimeError("the Pub/Sub emulator jar is not installed (scripts/install-test-deps.sh)")
    records = int(a.seconds * a.rate)
    model = a.model or model_dir(a.work_dir, a.preset)
    data = data_dir(a.work_dir, a.preset, records, seed=3)
    logs = os.path.join(a.work_dir, "streaming-throughput-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    server, port, _ = servers.start_server(
        "pubsub-emulator", lambda p: [java, "-jar", jar, f"--host={servers.LOOPBACK}", f"--port={p}"], "/",
        servers.Path(logs))
    job = publisher = arrivals = dead = None
    try:
        emu = servers.PubSubEmulator(host=f"{servers.LOOPBACK}:{port}", project=servers.PROJECT, process=server,
                                     startup_s=0.0)
        os.environ.update(emu.env)
        sub = emu.create_subscription("tput-in-sub", "tput-in")
        emu.create_subscription("tput-out-sub", "tput-out")
        emu.create_subscription("tput-dead-sub", "tput-dead")
        metrics_port = servers.free_port()
        argv = ["--runner=DirectRunner", "--streaming", "--input_subscription", sub, "--model", model,
                "--output_topic", emu.topic_path("tput-out"), "--dead_letter", emu.topic_path("tput-dead"),
                "--batch_size", str(a.batch_size), "--batch_duration_s", str(a.batch_duration_s),
                "--torch_threads", "1", "--metrics_port", str(metrics_port), "--metrics_addr", "127.0.0.1"]
        job_log = open(os.path.join(logs, "job.log"), "w")
        job = subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", *argv], cwd=ROOT, env=dict(os.environ),
                               stdout=job_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not scrape(metrics_port):  # /metrics answers once a worker runs the graph
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the streaming job did not start; see {logs}/job.log")
            time.sleep(0.5)
        time.sleep(a.settle_s)  # the reader subscribes
        arrivals = Arrivals(emu.subscriber, emu.subscription_path("tput-out-sub"))
        dead = Arrivals(emu.subscriber, emu.subscription_path("tput-dead-sub"))
        pub_log = open(os.path.join(logs, "publish.log"), "w")
        published_at = time.time()
        publisher = subprocess.Popen([sys.executable, "-m", "emmr.cli", "publish", "--topic", "tput-in", "--data", data,
                                      "--rate", str(a.rate), "--project", servers.PROJECT], cwd=ROOT,
                                     env=dict(os.environ), stdout=pub_log, stderr=subprocess.STDOUT)
        publisher.wait(timeout=a.seconds * 3 + 60)
        if publisher.returncode:
            raise RuntimeError(f"emmr publish exited {publisher.returncode}; see {logs}/publish.log")
        last_published = time.time()
        deadline = time.monotonic() + a.drain_s
        while len(arrivals) + len(dead) < records and time.monotonic() < deadline:
            if job.poll() is not None:
                raise RuntimeError(f"the streaming job exited {job.returncode}; see {logs}/job.log")
            time.sleep(0.2)
        job_metrics = scrape(metrics_port)
    finally:
        for a_ in (arrivals, dead):
            if a_ is not None:
                a_.stop()
        stop_processes((publisher, job), grace_s=15)
        server.stop()

    rows = arrivals.rows
    arrived = np.array([r[0] for r in rows])
    out_published = np.array([r[1] for r in rows])
    scored = np.array([iso_seconds(r[2]["scored_at"]) for r in rows])
    to_scored = np.array([r[2]["latency_s"] for r in rows], dtype=float)
    in_published = scored - to_scored
    e2e = arrived - in_published
    # The steady part leaves out the first --warmup-s and the last --cooldown-s of publishing: when the input stops,
    # the DirectRunner's reader waits in its next pull (beam_pipeline/acks.py, 10 s) before the last partial batch's
    # timer fires, a stop that a sustained stream does not have (the tail is reported apart, with every record).
    steady = (in_published >= published_at + a.warmup_s) & (in_published < last_published - a.cooldown_s)
    received = len(rows) + len(dead.rows)
    note(f"{a.preset}: {records} records published at {a.rate:g}/s over {last_published - published_at:.1f} s, batch "
         f"{a.batch_size}, --batch_duration_s {a.batch_duration_s}; {len(rows)} predictions + {len(dead.rows)} dead "
         f"letters received; steady part: {int(steady.sum())} records published after the first {a.warmup_s:g} s and "
         f"before the last {a.cooldown_s:g} s; "
         f"load average {os.getloadavg()[0]:.1f}")
    if received != records:
        note(f"NOT every record came out within {a.drain_s:g} s of the last publication: {received} of {records}")
    calls = metric(job_metrics, "emmr_inference_latency_seconds_count")
    emit("published", records, results)
    emit("received", received, results)
    start, stop = published_at + a.warmup_s, last_published  # predictions out per second while the input flowed
    emit("streaming_records_per_s", ((arrived >= start) & (arrived < stop)).sum() / (stop - start), results)
    for name, part in (("to_scored", to_scored), ("to_output", out_published - scored),
                       ("to_arrival", arrived - out_published)):
        emit(f"streaming_{name}_mean_s", float(np.mean(part[steady])), results)
    if calls:
        emit("job_records_per_model_call", metric(job_metrics, "emmr_batch_size_records_sum") / calls, results)
        emit("job_seconds_per_model_call", metric(job_metrics, "emmr_inference_latency_seconds_sum") / calls, results)
    emit("streaming_latency_p50_s", float(np.quantile(e2e[steady], 0.5)), results)
    emit("streaming_latency_p90_s", float(np.quantile(e2e[steady], 0.9)), results)
    emit("streaming_latency_max_s", float(np.max(e2e[steady])), results)
    emit("streaming_latency_p99_every_record_s", float(np.quantile(e2e, 0.99)), results)
    emit("streaming_latency_max_every_record_s", float(np.max(e2e)), results)
    return {"latency_s": e2e.tolist(), "steady": steady.tolist(), "to_scored_s": to_scored.tolist(),
            "to_output_s": (out_published - scored).tolist(), "to_arrival_s": (arrived - out_published).tolist(),
            "dead_letters": len(dead.rows), "job_metrics": {k: v for k, v in job_metrics.items() if k.startswith("emmr_")},
            "p99": float(np.quantile(e2e[steady], 0.99))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset, random weights (default small)")
    p.add_argument("--model", help="a checkpoint to serve instead (its preset's records are published)")
    p.add_argument("--rate", type=float, default=100.0, help="records published per second (default 100)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of publishing (default 60)")
    p.add_argument("--warmup-s", type=float, default=10.0, help="first seconds left out of the figures (default 10)")
    p.add_argument("--cooldown-s", type=float, default=2.0, help="last seconds left out of the figures (default 2)")
    p.add_argument("--batch-size", type=int, default=256, help="--batch_size of the job (default 256)")
    p.add_argument("--batch-duration-s", type=float, default=0.5, help="--batch_duration_s of the job (default 0.5)")
    p.add_argument("--settle-s", type=float, default=5.0, help="wait after the job answers /metrics (default 5)")
    p.add_argument("--drain-s", type=float, default=60.0, help="wait for the last outputs at most (default 60)")
    p.add_argument("--quick", action="store_true", help="20 s of publishing, 5 s warm-up")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="data, checkpoints, logs (default runs/bench/pipeline)")
    p.add_argument("--json", default=None, help="also write the figures and every latency here")
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.warmup_s = min(a.seconds, 20.0), min(a.warmup_s, 5.0)
    describe_machine()
    results: dict = {}
    detail = run(a, results)
    if a.json:
        write_json(a.json, {"environment": environment(), "args": vars(a), "results": {**results,
                            "streaming_latency_p99_s": detail["p99"]}, "detail": detail})
    emit("streaming_latency_p99_s", detail["p99"], results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
