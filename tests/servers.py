"""Real servers for the integration tests, as session-scoped pytest fixtures (loaded from tests/conftest.py).

Each fixture starts a real server on a free loopback port, waits until it answers, sets the environment
variables its clients read (in this process, so subprocesses and in-process Beam pipelines inherit them), and
stops it (by PID) when the session ends, restoring the environment.

| fixture           | server                                             | environment it sets                         |
| ----------------- | -------------------------------------------------- | ------------------------------------------- |
| `pubsub_emulator` | the Cloud SDK's Pub/Sub emulator jar, run by java  | PUBSUB_EMULATOR_HOST, PUBSUB_PROJECT_ID     |
| `gcs_emulator`    | `gcp-storage-emulator start --in-memory`           | STORAGE_EMULATOR_HOST, CLOUD_STORAGE_EMULATOR_ENDPOINT, GOOGLE_APPLICATION_CREDENTIALS (fake), GOOGLE_CLOUD_PROJECT, NO_GCE_CHECK, GCE_METADATA_HOST/IP/ROOT |
| `pushgateway`     | /usr/bin/prometheus-pushgateway, in memory         | (none: use `.url`)                          |
| `prometheus`      | /usr/bin/prometheus scraping that Pushgateway (1 s) and any target added with `add_target` | (none: use `.url`, `query`) |

What each client needs (all verified by tests/test_servers.py):
- google-cloud-pubsub clients (and Beam's ReadFromPubSub/WriteToPubSub on the DirectRunner, which use them)
  read PUBSUB_EMULATOR_HOST when the client is created, and then use an insecure channel and anonymous
  credentials. Topic ids need 3 characters or more.
- google-cloud-storage reads STORAGE_EMULATOR_HOST (`http://127.0.0.1:PORT`) and goes anonymous when given no
  credentials.
- Beam's gs:// filesystem (FileSystems, gcsio, ReadFromParquet, WriteToParquet) builds a google-cloud-storage
  client, so it follows STORAGE_EMULATOR_HOST; but first it looks for Google credentials and, finding none,
  retries with backoff for about 17 s per process. The fixture therefore points GOOGLE_APPLICATION_CREDENTIALS
  at a fake `authorized_user` file whose access token never expires (so nothing is refreshed and nothing
  leaves the machine; the emulator ignores the token). This works across processes, too.
- pyarrow.fs.GcsFileSystem needs anonymous access and the endpoint: `GcsEmulator.pyarrow_fs()`, or
  `GcsFileSystem(anonymous=True, scheme="http", endpoint_override="127.0.0.1:PORT")`, or a URI
  `gs://anonymous@bucket/path` with CLOUD_STORAGE_EMULATOR_ENDPOINT set (without `anonymous` it tries to mint
  an OAuth token and fails after its retry limit).
- NO_GCE_CHECK=true and GCE_METADATA_{HOST,IP,ROOT}=127.0.0.1:9 keep google-auth from probing the cloud
  metadata address.

Under CI (env CI=true) a missing binary or a server that does not start fails the test that asked for it;
elsewhere it is skipped with the reason. `scripts/install-test-deps.sh` installs what is missing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

LOOPBACK = "127.0.0.1"
PROJECT = "emmr-local"  # the emulators accept any project; `emmr publish` defaults to this one
METADATA_BLACKHOLE = "127.0.0.1:9"  # discard port: nothing listens, connections are refused at once
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

NO_CLOUD_ENV = {
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": METADATA_BLACKHOLE,
    "GCE_METADATA_IP": METADATA_BLACKHOLE,
    "GCE_METADATA_ROOT": METADATA_BLACKHOLE,
}
# An access token that never expires, so google-auth never refreshes it (token_uri is unreachable anyway).
FAKE_ADC = {
    "type": "authorized_user",
    "client_id": "emmr-tests",
    "client_secret": "emmr-tests",
    "refresh_token": "emmr-tests",
    "token": "emmr-tests-fake-token",
    "expiry": "2099-01-01T00:00:00Z",
    "token_uri": f"http://{METADATA_BLACKHOLE}/token",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """A server or binary the test needs is not there: fail under CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test server that is missing or does not start is an error; see scripts/install-test-deps.sh)", pytrace=False)
    pytest.skip(f"{reason}; run scripts/install-test-deps.sh")


def require_binary(name: str) -> str:
    """The path of an executable on PATH (or /usr/bin), or fail/skip naming it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
    if not path:
        unavailable(f"{name!r} is not installed")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGKILL if the pytest process dies without tearing it down."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ServerProcess:
    """One server process: started with its output in a log file, stopped by PID (TERM, then KILL)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.log_path = name, argv, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def wait_until_ready(server: ServerProcess, url: str, timeout: float = START_TIMEOUT_S) -> float:
    """Poll `url` until it answers 200; return the seconds it took. Raises RuntimeError with the log tail."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited with status {server.proc.returncode}:\n{server.log_tail()}")
        if http_get(url, timeout=1.0)[0] == 200:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f} s:\n{server.log_tail()}")


def start_server(name: str, make_argv: Callable[[int], list[str]], ready_path: str, log_dir: Path,
                 env: dict[str, str] | None = None, attempts: int = 3) -> tuple[ServerProcess, int, float]:
    """Start a server on a free port (retrying on another port if it loses a race for it) and wait for it.

    Returns (process, port, seconds to ready). A server that never answers fails or skips via `unavailable`.
    """
    errors = []
    for attempt in range(attempts):
        port = free_port()
        server = ServerProcess(name, make_argv(port), log_dir / f"{name}-{port}.log", env).start()
        try:
            return server, port, wait_until_ready(server, f"http://{LOOPBACK}:{port}{ready_path}")
        except RuntimeError as e:
            server.stop()
            errors.append(str(e))
    unavailable(f"{name} failed to start {attempts} times; last error: {errors[-1]}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables in this process for the duration; restore them afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in values.items():
            mp.setenv(k, v)
        yield


# ---------------------------------------------------------------------------------------------- Pub/Sub


def pubsub_emulator_jar() -> str | None:
    """The Pub/Sub emulator jar of the Google Cloud CLI (or $EMMR_PUBSUB_EMULATOR_JAR)."""
    if os.environ.get("EMMR_PUBSUB_EMULATOR_JAR"):
        return os.environ["EMMR_PUBSUB_EMULATOR_JAR"]
    roots = ["/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk",
             os.path.expanduser("~/google-cloud-sdk")]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.insert(0, str(Path(os.path.realpath(gcloud)).parent.parent))
    for root in roots:
        jars = sorted(glob.glob(os.path.join(root, "platform", "pubsub-emulator", "lib", "cloud-pubsub-emulator-*.jar")))
        if jars:
            return jars[-1]
    return None


@dataclass
class PubSubEmulator:
    host: str  # "127.0.0.1:PORT": the value of PUBSUB_EMULATOR_HOST
    project: str
    process: ServerProcess
    startup_s: float
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host, "PUBSUB_PROJECT_ID": self.project}

    @property
    def publisher(self):
        if "pub" not in self._clients:
            from google.cloud import pubsub_v1

            with environment(self.env):  # clients read the variable when created
                self._clients["pub"] = pubsub_v1.PublisherClient()
        return self._clients["pub"]

    @property
    def subscriber(self):
        if "sub" not in self._clients:
            from google.cloud import pubsub_v1

            with environment(self.env):
                self._clients["sub"] = pubsub_v1.SubscriberClient()
        return self._clients["sub"]

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return subscription if subscription.startswith("projects/") else f"projects/{self.project}/subscriptions/{subscription}"

    def create_topic(self, topic: str) -> str:
        """Create (idempotently) and return the topic's path. Topic ids need >= 3 characters."""
        from google.api_core.exceptions import AlreadyExists

        path = self.topic_path(topic)
        with contextlib.suppress(AlreadyExists):
            self.publisher.create_topic(name=path)
        return path

    def create_subscription(self, subscription: str, topic: str, ack_deadline_s: int = 60) -> str:
        """Create the topic if needed and a pull subscription on it; return the subscription's path.

        Only messages published after this call reach the subscription.
        """
        from google.api_core.exceptions import AlreadyExists

        topic_path, path = self.create_topic(topic), self.subscription_path(subscription)
        with contextlib.suppress(AlreadyExists):
            self.subscriber.create_subscription(name=path, topic=topic_path, ack_deadline_seconds=ack_deadline_s)
        return path

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message and return its id."""
        return self.publisher.publish(self.topic_path(topic), data, **attributes).result(timeout=30)

    def pull(self, subscription: str, expected: int | None = None, timeout: float = 30.0, batch: int = 1000) -> list:
        """Pull and acknowledge messages until `expected` have come, then pull once more briefly to catch extra
        ones (expected=0 checks that nothing came). With expected=None: until a pull comes back empty after some
        messages came. Gives up after `timeout` s. Returns the PubsubMessage objects (data, attributes, ...)."""
        from google.api_core import exceptions as gexc

        path, out = self.subscription_path(subscription), []
        deadline, extra_check = time.monotonic() + timeout, expected is not None and expected <= 0
        while time.monotonic() < deadline:
            try:
                response = self.subscriber.pull(request={"subscription": path, "max_messages": batch},
                                                timeout=1.0 if extra_check or expected is None else 5.0)
                received = list(response.received_messages)
            except (gexc.DeadlineExceeded, gexc.RetryError):
                received = []
            if received:
                self.subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in received]})
                out.extend(m.message for m in received)
            else:
                time.sleep(0.05)  # an empty pull can come back at once
            if expected is None and not received and out:
                break
            if expected is not None and len(out) >= expected:
                if extra_check and not received:
                    break
                extra_check = True
        return out


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory) -> Iterator[PubSubEmulator]:
    """A Pub/Sub emulator on a free loopback port; PUBSUB_EMULATOR_HOST is set for the session."""
    java = require_binary("java")
    jar = pubsub_emulator_jar()
    if not jar or not os.path.exists(jar):
        unavailable("the Pub/Sub emulator jar (google-cloud-cli-pubsub-emulator) is not installed")
    log_dir = tmp_path_factory.mktemp("pubsub-emulator")
    server, port, startup = start_server(
        "pubsub-emulator", lambda port: [java, "-jar", jar, f"--host={LOOPBACK}", f"--port={port}"], "/", log_dir)
    emulator = PubSubEmulator(host=f"{LOOPBACK}:{port}", project=PROJECT, process=server, startup_s=startup)
    try:
        with environment(emulator.env):
            yield emulator
    finally:
        for client in emulator._clients.values():
            with contextlib.suppress(Exception):
                (client.stop if hasattr(client, "stop") else client.close)()
        server.stop()


# ---------------------------------------------------------------------------------------------- GCS


@dataclass
class GcsEmulator:
    url: str  # "http://127.0.0.1:PORT": the value of STORAGE_EMULATOR_HOST
    project: str
    credentials_file: str
    process: ServerProcess
    startup_s: float

    @property
    def endpoint(self) -> str:
        """host:port, for pyarrow's endpoint_override."""
        return self.url.split("://", 1)[1]

    @property
    def env(self) -> dict[str, str]:
        return {
            **NO_CLOUD_ENV,
            "STORAGE_EMULATOR_HOST": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,  # google-cloud-cpp, hence pyarrow's gs:// URIs
            "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def client(self):
        """A google-cloud-storage client talking to the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_bucket(self, name: str) -> str:
        """Create a bucket (idempotently); return its name."""
        from google.api_core.exceptions import Conflict

        with contextlib.suppress(Conflict):
            self.client().create_bucket(name)
        return name

    def pyarrow_fs(self):
        """pyarrow.fs.GcsFileSystem on the emulator; paths are "bucket/key"."""
        from datetime import timedelta

        from pyarrow import fs

        return fs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=self.endpoint,
                                project_id=self.project, retry_time_limit=timedelta(seconds=10))


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[GcsEmulator]:
    """gcp-storage-emulator (in memory) on a free loopback port; the GCS client variables are set for the session."""
    exe = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) or shutil.which("gcp-storage-emulator")
    if not exe:
        unavailable("gcp-storage-emulator is not installed in the virtualenv (requirements/dev.txt)")
    work = tmp_path_factory.mktemp("gcs-emulator")
    credentials = work / "fake-adc.json"
    credentials.write_text(json.dumps(FAKE_ADC))
    server, port, startup = start_server(
        "gcs-emulator", lambda port: [exe, "start", "--host", LOOPBACK, "--port", str(port), "--in-memory", "--quiet"],
        "/", work, env=NO_CLOUD_ENV)
    emulator = GcsEmulator(url=f"http://{LOOPBACK}:{port}", project=PROJECT, credentials_file=str(credentials),
                           process=server, startup_s=startup)
    try:
        with environment(emulator.env):
            yield emulator
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- Prometheus


@dataclass
class Pushgateway:
    url: str  # "http://127.0.0.1:PORT"
    process: ServerProcess
    startup_s: float

    @property
    def address(self) -> str:
        """host:port, as prometheus_client.push_to_gateway takes it (a URL works too)."""
        return self.url.split("://", 1)[1]

    def push_text(self, job: str, text: str, **grouping: str) -> None:
        """Push metrics in the text exposition format (replaces the group job/grouping)."""
        path = "/metrics/job/" + urllib.parse.quote(job, safe="")
        for k, v in grouping.items():
            path += f"/{urllib.parse.quote(k, safe='')}/{urllib.parse.quote(v, safe='')}"
        request = urllib.request.Request(self.url + path, data=text.encode(), method="PUT")
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status in (200, 202), r.status

    def wipe(self) -> None:
        """Delete every metric group (admin API)."""
        request = urllib.request.Request(self.url + "/api/v1/admin/wipe", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass


@dataclass
class Prometheus:
    url: str  # "http://127.0.0.1:PORT"
    pushgateway: Pushgateway
    workdir: Path
    process: ServerProcess
    startup_s: float

    def query(self, promql: str, timeout: float = 30.0, **kwargs) -> list[dict]:
        return query(self.url, promql, timeout=timeout, **kwargs)

    def add_target(self, address: str, job: str, **labels: str) -> None:
        """Scrape another host:port (a streaming worker's /metrics) every second, via file discovery.

        Like every target change, it takes Prometheus about 5 s to pick up; `query` polls.
        """
        path = self.workdir / "targets" / f"{job}-{address.replace(':', '_')}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": {"job": job, **labels}}]))
        tmp.rename(path)  # atomic: Prometheus never reads half a file

    def load_rules(self, *rule_files: str | Path) -> None:
        """Load alerting/recording rule files (replacing those loaded before) and reload the configuration."""
        rules = self.workdir / "rules"
        for old in rules.glob("*.yml"):
            old.unlink()
        for i, f in enumerate(rule_files):
            shutil.copy(f, rules / f"{i:02d}-{Path(f).stem}.yml")
        self.reload()

    def reload(self) -> None:
        request = urllib.request.Request(self.url + "/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"Prometheus rejected the reload: {e.read().decode(errors='replace')}") from None


def query(prom_url: str, promql: str, timeout: float = 30.0, interval: float = 0.25,
          predicate: Callable[[list[dict]], bool] | None = None) -> list[dict]:
    """Poll Prometheus' instant-query API until `promql` returns a non-empty result (or `predicate(result)` is
    true); return the result list ({"metric": {...}, "value": [t, "v"]} for a vector). The first sample of
    a new target is queryable about 6 s after Prometheus starts (its discovery updates every 5 s).
    Raises AssertionError with the last answer on timeout, ValueError on a query Prometheus rejects."""
    predicate = predicate or bool
    url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    deadline, last = time.monotonic() + timeout, None
    while True:
        status, body = http_get(url, timeout=10.0)
        if status == 400:
            raise ValueError(f"Prometheus rejected {promql!r}: {body.decode(errors='replace')}")
        if status == 200:
            last = json.loads(body)["data"]
            result = last["result"]
            if last["resultType"] in ("scalar", "string"):
                result = [{"metric": {}, "value": result}]
            if predicate(result):
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no result for {promql!r} within {timeout:.0f} s; last answer: {last}")
        time.sleep(interval)


def query_value(prom_url: str, promql: str, timeout: float = 30.0) -> float:
    """The value of a query that returns one sample."""
    result = query(prom_url, promql, timeout=timeout)
    assert len(result) == 1, f"{promql!r} returned {len(result)} series: {result}"
    return float(result[0]["value"][1])


PROMETHEUS_YML = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}/*.yml
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["{pushgateway}"]
  - job_name: targets
    file_sd_configs:
      - files: ["{targets}/*.json"]
        refresh_interval: 1s
"""


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory) -> Iterator[Pushgateway]:
    """A Pushgateway on a free loopback port, keeping metrics in memory only."""
    exe = require_binary("prometheus-pushgateway")
    work = tmp_path_factory.mktemp("pushgateway")
    server, port, startup = start_server(
        "pushgateway", lambda port: [exe, f"--web.listen-address={LOOPBACK}:{port}", "--persistence.file=",
                                     "--web.enable-admin-api", "--log.level=warn"], "/-/ready", work)
    try:
        yield Pushgateway(url=f"http://{LOOPBACK}:{port}", process=server, startup_s=startup)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory, pushgateway) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping the Pushgateway every second (tmp storage)."""
    exe = require_binary("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    for d in ("rules", "targets", "data"):
        (work / d).mkdir()
    config = work / "prometheus.yml"
    config.write_text(PROMETHEUS_YML.format(rules=work / "rules", targets=work / "targets", pushgateway=pushgateway.address))
    server, port, startup = start_server(
        "prometheus", lambda port: [exe, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                                    f"--web.listen-address={LOOPBACK}:{port}", "--web.enable-lifecycle",
                                    "--log.level=warn"], "/-/ready", work)
    try:
        yield Prometheus(url=f"http://{LOOPBACK}:{port}", pushgateway=pushgateway, workdir=work, process=server,
                         startup_s=startup)
    finally:
        server.stop()
