"""A model swap in the middle of a stream (issue #13, part 8), on the Pub/Sub emulator.

The streaming job follows --model_pattern models/*/checkpoint.json (in-process runners: the handler looks
itself, every --model_poll_s). Messages are published steadily for about 25 s; a few seconds in, a corrupt
checkpoint appears there (rejected: the model in service stays), then a second model (accepted). Every message must come back exactly once, each prediction
must say which model scored it (`model_version`) and carry that model's own output for its record (computed
here by calling each model directly), everything scored before the update was published must be the first
model's, everything published well after the second model's first prediction must be the second's, and the
worker must then report one model (emmr_model_info) and the updates it checked (emmr_model_updates_total).
"""

from __future__ import annotations

import json
import os
import shutil
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import numpy as np
import pytest
import torch

from emmr import checkpoint
from emmr.batch import from_arrow
from emmr.nn.emmr import EMMR
from emmr.scorer import Scorer
from schemas.message import encode_record
from servers import free_port, http_get
from test_bad_inputs import record, table
from test_pipeline import TINY, tiny_model  # noqa: F401 - session fixture: a model with hand-set weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNNER = "--runner=DirectRunner"
RATE, PUBLISH_S, BAD_UPDATE_AT_S, UPDATE_AT_S = 10, 25, 5, 8


def second_model(path: str) -> str:
    torch.manual_seed(7)
    model = EMMR(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    checkpoint.save(path, model, method="emmr", train_config={"note": "random weights: a second version"},
                    metrics={}, data_fingerprint={"note": "test"})
    return path


def _metric(text: str, pattern: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def test_a_model_swap_mid_stream_loses_and_duplicates_nothing(pubsub_emulator, tiny_model, tmp_path):  # noqa: F811
    em, tag = pubsub_emulator, uuid.uuid4().hex[:8]
    sub = em.create_subscription(f"swap-in-sub-{tag}", f"swap-in-{tag}", ack_deadline_s=10)
    out_sub = em.create_subscription(f"swap-out-sub-{tag}", f"swap-out-{tag}")
    em.create_topic(f"swap-dead-{tag}")
    models = tmp_path / "models"
    v1_path = str(shutil.copytree(tiny_model, models / "v1"))
    v2_path = second_model(str(tmp_path / "staging" / "v2"))  # copied in mid-stream, checkpoint.json last
    v1, v2 = Scorer.load(v1_path).version, Scorer.load(v2_path).version
    assert v1 != v2
    port = free_port()
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(
        [sys.executable, "-m", "beam_pipeline.run", RUNNER, "--streaming", "--input_subscription", sub,
         "--output_topic", em.topic_path(f"swap-out-{tag}"), "--dead_letter", em.topic_path(f"swap-dead-{tag}"),
         "--model", v1_path, "--model_pattern", str(models / "*" / "checkpoint.json"), "--model_poll_s", "1",
         "--batch_size", "8",
         "--batch_duration_s", "0.3", "--window_s", "5", "--metrics_port", str(port), "--metrics_addr", "127.0.0.1"],
        env={**os.environ, **em.env}, stdout=log, stderr=subprocess.STDOUT)
    published: list[str] = []
    update_published_at: list[float] = []

    def publish() -> None:
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < PUBLISH_S:
            elapsed = time.monotonic() - began
            if elapsed >= BAD_UPDATE_AT_S and len(update_published_at) == 0:  # a corrupt checkpoint: rejected
                shutil.copytree(v1_path, models / "bad")
                meta = models / "bad" / "checkpoint.json"
                meta.write_text(meta.read_text().replace('"model_version"', '"model_version_"'))
                (models / "bad" / "model.safetensors").write_bytes(b"not the weights")
                os.utime(meta)
                update_published_at.append(time.time())
            if elapsed >= UPDATE_AT_S and len(update_published_at) == 1:  # the second model: accepted
                shutil.copytree(v2_path, models / "v2", ignore=shutil.ignore_patterns("checkpoint.json"))
                shutil.copy(os.path.join(v2_path, "checkpoint.json"), models / "v2" / "checkpoint.json")
                update_published_at.append(time.time())
            rid = f"s-{i:05d}"
            payload, attributes = encode_record(table([record(rid)]).to_batches()[0])
            em.publish(f"swap-in-{tag}", payload, **attributes)
            published.append(rid)
            i += 1
            time.sleep(max(0.0, began + i / RATE - time.monotonic()))

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the job is up (its /metrics answers) before the flow starts
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            if http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] == 200:
                break
            time.sleep(0.2)
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        predictions = []
        deadline = time.monotonic() + PUBLISH_S + 90
        while time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            predictions += [json.loads(m.data) for m in em.pull(out_sub, expected=None, timeout=3)]
            if not publisher.is_alive() and len({p["id"] for p in predictions}) >= len(published):
                break
        text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1].decode()
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGKILL)
            job.wait(30)
        log.close()

    ids = [p["id"] for p in predictions]
    assert sorted(ids) == sorted(published), (len(ids), len(set(ids)), len(published))  # each once
    versions = {p["model_version"] for p in predictions}
    assert versions == {v1, v2}, versions
    # each prediction is its model's own output for the record (every record here holds the same features)
    one = table([record("x")])
    want = {v: Scorer.load(path).score(from_arrow(one, TINY.modalities)).probabilities[0]
            for v, path in ((v1, v1_path), (v2, v2_path))}
    assert not np.allclose(want[v1], want[v2])
    for p in predictions:
        np.testing.assert_allclose(p["probabilities"], want[p["model_version"]], rtol=1e-5, atol=1e-6)
    # the model in force: v1 until the update, v2 from shortly after its first prediction
    scored = {p["id"]: (datetime.fromisoformat(p["scored_at"]).timestamp(), p["model_version"]) for p in predictions}
    bad_at, update_at = update_published_at
    assert all(v == v1 for t, v in scored.values() if t < update_at), "scored by v2 before v2 was announced"
    first_v2 = min(t for t, v in scored.values() if v == v2)
    assert all(v == v2 for t, v in scored.values() if t > first_v2 + 2.0), "v1 still scoring after the swap"
    # the worker serves one model, and counted the candidates it checked (the corrupt one, v2)
    info = _metric(text, r'^emmr_model_info\{[^}]*version="([0-9a-f]+)"[^}]*\} ([0-9.e+]+)$')
    assert info == {v2: 1.0}, info
    outcomes = _metric(text, r'^emmr_model_updates_total\{outcome="(\w+)"\} ([0-9.e+]+)$')
    assert outcomes == {"accepted": 1.0, "rejected": 1.0}, outcomes
    assert "rejected, the current model stays" in (tmp_path / "job.log").read_text()
