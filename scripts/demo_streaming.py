"""`make demo-streaming`: the streaming job end to end on this machine, against the real Pub/Sub emulator.

Starts the emulator (the Google Cloud CLI's jar, run by java; `scripts/install-test-deps.sh` installs both), creates
the topics and subscriptions, starts the streaming job (`emmr-score`, DirectRunner) and publishes synthetic records
plus deliberately bad ones with `emmr publish`. It prints every prediction and dead letter as it arrives and an
excerpt of the job's /metrics every few seconds, and stops everything (the job, the emulator) after --seconds or
on Ctrl-C. Without --model it first trains a small model (about half a minute).

    python scripts/demo_streaming.py [OUT] [--seconds 120] [--records 200] [--rate 20] [--model CKPT]

Everything it writes (data, model, the job's and the emulator's logs) goes under OUT (default runs/demo-streaming).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq

HOST = "127.0.0.1"
PROJECT = "emmr-local"
METRICS_SHOWN = ("emmr_input_records_total", "emmr_records_total", "emmr_dead_letters_total", "emmr_key_missing_total")


def say(text: str = "") -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except OSError:
        return 0, ""


def emulator_jar() -> str | None:
    """The Pub/Sub emulator jar: $EMMR_PUBSUB_EMULATOR_JAR, else the Google Cloud CLI's (the same search as
    tests/servers.py and scripts/install-test-deps.sh)."""
    if os.environ.get("EMMR_PUBSUB_EMULATOR_JAR"):
        return os.environ["EMMR_PUBSUB_EMULATOR_JAR"]
    roots = ["/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk",
             os.path.expanduser("~/google-cloud-sdk")]
    if shutil.which("gcloud"):
        roots.insert(0, str(Path(os.path.realpath(shutil.which("gcloud"))).parent.parent))
    for root in roots:
        jars = sorted(glob.glob(os.path.join(root, "platform", "pubsub-emulator", "lib", "cloud-pubsub-emulator-*.jar")))
        if jars:
            return jars[-1]
    return None


class Processes:
    """The processes the demo starts, each in its own session (Ctrl-C reaches the demo only, which stops them in
    order); stopped by process group: TERM, then KILL."""

    def __init__(self):
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 15.0) -> None:
        """TERM to every process group (the last started first), then KILL to what is still there after grace_s
        in all: on a loaded machine the job and the emulator stop together, not one after the other."""
        alive = [(name, proc) for name, proc in reversed(self.running) if proc.poll() is None]
        for name, proc in alive:
            say(f"   stopping {name} (pid {proc.pid})")
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name, proc in alive:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"   {name} did not stop in {grace_s:g} s: killed")
                self._signal(proc, signal.SIGKILL)
                proc.wait(10)
        self.running.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


def run_quietly(argv: list[str], log: Path) -> None:
    with open(log, "ab") as f:
        subprocess.run(argv, check=True, stdout=f, stderr=subprocess.STDOUT)


def prepare_data(out: Path, records: int) -> tuple[Path, Path]:
    """Synthetic records (30 % missing a modality) and a file of deliberately bad ones, in two folders."""
    from beam_pipeline.samples import bad_records
    from emmr import synth
    from emmr.config import preset

    config = preset("small")
    good, bad = out / "data" / "good", out / "data" / "bad"
    synth.write(synth.SynthParams(records=records, seed=2, missing_rate=0.3), config.modalities, str(good))
    bad.mkdir(parents=True, exist_ok=True)
    table, _ = bad_records(config.modalities, config.num_classes)
    pq.write_table(table, bad / "bad-records.parquet")
    return good, bad


def train_model(out: Path, emmr: list[str]) -> str:
    model = out / "model"
    if (model / "checkpoint.json").exists():
        return str(model)
    say("== training a small model first, as `make demo` does (about half a minute; pass --model runs/demo/model to "
        "reuse that one)")
    run_quietly(emmr + ["synth", "--out", str(out / "data" / "train"), "--records", "1500", "--seed", "1",
                        "--preset", "small", "--missing-rate", "0.0"], out / "train.log")
    # The settings of scripts/demo.sh: with fewer epochs the averaged weights of the small preset flag no better
    # than chance.
    run_quietly(emmr + ["train", "--data", str(out / "data" / "train"), "--out", str(model), "--preset", "small",
                        "--epochs", "12", "--teacher-epochs", "6", "--batch-size", "64", "--no-progress"],
                out / "train.log")
    return str(model)


def pubsub_setup(host: str, tag: str) -> dict[str, str]:
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    names = {}
    for kind in ("input", "predictions", "dead-letters"):
        topic = f"projects/{PROJECT}/topics/emmr-{kind}-{tag}"
        subscription = f"projects/{PROJECT}/subscriptions/emmr-{kind}-{tag}"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
        names[kind] = topic
        names[kind + "-sub"] = subscription
    return names


def show_prediction(p: dict) -> str:
    probs = p.get("probabilities") or []
    confidence = f"{max(probs):.2f}" if probs else "?"
    flag = f"key missing: {p['key_modality']} (its absence flips the label)" if p.get("key_missing") else (
        f"missing {','.join(p['missing'])}, not key" if p.get("missing") else "complete")
    latency = f"{p['latency_s']:.2f} s" if p.get("latency_s") is not None else "?"
    return f"   prediction   {p['id']:<18} {p['label']:<9} p={confidence}  {flag:<48} latency {latency}"


def show_dead_letter(d: dict) -> str:
    return f"   dead letter  {str(d.get('id')):<18} {d['error_kind']:<22} {d['error'][:110]}"


def metrics_excerpt(port: int) -> list[str]:
    status, body = http_get(f"http://{HOST}:{port}/metrics")
    if status != 200:
        return ["   /metrics: not answering yet"]
    lines = [line for line in body.splitlines() if line.startswith(METRICS_SHOWN) and not line.startswith("#")]
    lines = [line for line in lines if not line.endswith(" 0.0") or line.startswith("emmr_input")]
    return [f"   /metrics  {line}" for line in lines] or ["   /metrics: no counts yet"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="runs/demo-streaming", help="folder for everything it writes")
    p.add_argument("--seconds", type=float, default=120.0, help="stop after this many seconds (default 120)")
    p.add_argument("--records", type=int, default=200, help="synthetic records to publish (default 200)")
    p.add_argument("--rate", type=float, default=20.0, help="records published per second (default 20)")
    p.add_argument("--model", help="checkpoint to serve (default: train a small one under OUT/model)")
    p.add_argument("--metrics-every", type=float, default=10.0, help="seconds between /metrics excerpts (default 10)")
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    emmr = [str(bin_dir / "emmr")] if (bin_dir / "emmr").exists() else [sys.executable, "-m", "emmr.cli"]
    score = [str(bin_dir / "emmr-score")] if (bin_dir / "emmr-score").exists() else [sys.executable, "-m", "beam_pipeline.run"]
    java, jar = shutil.which("java"), emulator_jar()
    if not java or not jar:
        say("demo-streaming: needs java and the Pub/Sub emulator jar; run scripts/install-test-deps.sh (make test "
            "does), or set EMMR_PUBSUB_EMULATOR_JAR")
        return 2

    started = time.monotonic()
    procs = Processes()
    interrupted = False

    stop = threading.Event()  # set by Ctrl-C or a TERM once the demo is showing output

    def on_signal(signum, frame):  # Ctrl-C or a TERM: stop cleanly, no traceback
        if stop_at_next_pull:  # the loop below sees it within a pull's timeout; no exception inside gRPC calls
            stop.set()
        else:
            raise KeyboardInterrupt

    stop_at_next_pull = False
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    counts = {"published": 0, "predictions": 0, "dead letters": 0}
    try:
        model = args.model or train_model(out, emmr)
        good, bad = prepare_data(out, args.records)

        port = free_port()
        host = f"{HOST}:{port}"
        say(f"== 1. the Pub/Sub emulator on {host} (log: {out / 'emulator.log'})")
        procs.start("the Pub/Sub emulator", [java, "-jar", jar, f"--host={HOST}", f"--port={port}"], out / "emulator.log")
        deadline = time.monotonic() + 60
        while http_get(f"http://{host}/")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start; see {out / 'emulator.log'}")
            time.sleep(0.2)
        env = {"PUBSUB_EMULATOR_HOST": host, "PUBSUB_PROJECT_ID": PROJECT}
        os.environ.update(env)
        names = pubsub_setup(host, uuid.uuid4().hex[:6])
        say(f"   topics {names['input']}, {names['predictions']}, {names['dead-letters']} and a subscription on each")

        metrics_port = free_port()
        job_argv = score + ["--runner=DirectRunner", f"--input_subscription={names['input-sub']}",
                            f"--output_topic={names['predictions']}", f"--dead_letter={names['dead-letters']}",
                            f"--model={model}", f"--metrics_port={metrics_port}", f"--metrics_addr={HOST}",
                            "--batch_duration_s=0.5", "--job_name=emmr-demo-streaming"]
        say(f"== 2. the streaming job (log: {out / 'job.log'}):\n   {' '.join(job_argv[1:] if len(score) == 1 else job_argv)}")
        job = procs.start("the streaming job", job_argv, out / "job.log")
        while http_get(f"http://{HOST}:{metrics_port}/metrics")[0] != 200:
            if job.poll() is not None:
                raise RuntimeError(f"the streaming job exited with status {job.returncode}; see {out / 'job.log'}")
            time.sleep(0.5)
        say(f"   serving /metrics on http://{HOST}:{metrics_port}/metrics")

        say(f"== 3. publishing {args.records} synthetic records at {args.rate:g}/s, then the bad ones, with emmr publish")
        to_publish = [emmr + ["publish", "--topic", names["input"], "--data", str(good), "--rate", str(args.rate)],
                      emmr + ["publish", "--topic", names["input"], "--data", str(bad)]]
        publish = procs.start("emmr publish", to_publish.pop(0), out / "publish.log", env)
        counts["published"] = args.records + pq.read_metadata(bad / "bad-records.parquet").num_rows

        say(f"== 4. what comes out (until {args.seconds:g} s have passed, or Ctrl-C)")
        from google.cloud import pubsub_v1
        from google.api_core import exceptions as gexc

        subscriber = pubsub_v1.SubscriberClient()
        last_metrics, shown = time.monotonic(), None
        stop_at_next_pull = True
        while time.monotonic() - started < args.seconds:
            if stop.is_set():
                raise KeyboardInterrupt
            if job.poll() is not None:
                raise RuntimeError(f"the streaming job exited with status {job.returncode}; see {out / 'job.log'}")
            if publish.poll() is not None and to_publish:  # the synthetic records are out: now the bad ones
                publish = procs.start("emmr publish (bad records)", to_publish.pop(0), out / "publish.log", env)
            for kind, show in (("predictions", show_prediction), ("dead-letters", show_dead_letter)):
                try:
                    response = subscriber.pull(request={"subscription": names[kind + "-sub"], "max_messages": 100},
                                               timeout=1.0)
                except (gexc.DeadlineExceeded, gexc.RetryError):
                    continue
                if response.received_messages:
                    subscriber.acknowledge(request={"subscription": names[kind + "-sub"],
                                                    "ack_ids": [m.ack_id for m in response.received_messages]})
                for m in response.received_messages:
                    say(show(json.loads(m.message.data)))
                    counts["predictions" if kind == "predictions" else "dead letters"] += 1
            if time.monotonic() - last_metrics >= args.metrics_every:
                last_metrics = time.monotonic()
                excerpt = metrics_excerpt(metrics_port)
                if (excerpt, counts) != shown:  # only what changed
                    shown = (excerpt, dict(counts))
                    say("\n".join(excerpt))
                    done = counts["predictions"] + counts["dead letters"]
                    state = "publishing" if publish.poll() is None or to_publish else "all published"
                    say(f"   so far: {counts['predictions']} predictions + {counts['dead letters']} dead letters = "
                        f"{done} of {counts['published']} records published ({state})")
        say(f"== {args.seconds:g} s have passed")
    except KeyboardInterrupt:
        interrupted = True
        say("\n== interrupted")
    except (RuntimeError, subprocess.CalledProcessError) as e:
        say(f"demo-streaming: {e}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the servers running
        if procs.running:
            say("== stopping")
            procs.stop_all()
    done = counts["predictions"] + counts["dead letters"]
    say(f"== {counts['predictions']} predictions + {counts['dead letters']} dead letters = {done} of "
        f"{counts['published']} records published, in {time.monotonic() - started:.0f} s; logs under {out}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
