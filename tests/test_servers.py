"""The real test servers of tests/servers.py answer, and each client the job uses can talk to them."""

from __future__ import annotations

import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from servers import query, query_value

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_pubsub_emulator_publish_and_pull(pubsub_emulator):
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host
    topic, sub = _name("servers-topic"), _name("servers-sub")
    subscription = pubsub_emulator.create_subscription(sub, topic)  # before publishing
    message_id = pubsub_emulator.publish(topic, b"hello", kind="greeting")
    messages = pubsub_emulator.pull(subscription, expected=1)
    assert [(m.data, dict(m.attributes), m.message_id) for m in messages] == [(b"hello", {"kind": "greeting"}, message_id)]


def test_gcs_emulator_google_cloud_storage(gcs_emulator):
    from google.cloud import storage

    bucket = gcs_emulator.create_bucket(_name("servers-gcs"))
    assert gcs_emulator.create_bucket(bucket) == bucket  # idempotent
    gcs_emulator.client().bucket(bucket).blob("a/b.txt").upload_from_string(b"payload")
    # A client built the ordinary way finds the emulator through the environment the fixture set.
    client = storage.Client()
    assert client.bucket(bucket).blob("a/b.txt").download_as_bytes() == b"payload"
    assert [b.name for b in client.list_blobs(bucket, prefix="a/")] == ["a/b.txt"]


def test_gcs_emulator_pyarrow(gcs_emulator):
    from pyarrow import fs

    bucket = gcs_emulator.create_bucket(_name("servers-arrow"))
    gcsfs = gcs_emulator.pyarrow_fs()
    table = pa.table({"id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]})
    pq.write_table(table, f"{bucket}/t/part-0.parquet", filesystem=gcsfs)
    assert pq.read_table(f"{bucket}/t", filesystem=gcsfs).equals(table)
    infos = gcsfs.get_file_info(fs.FileSelector(f"{bucket}/t"))
    assert [i.path for i in infos] == [f"{bucket}/t/part-0.parquet"]
    # A gs:// URI works too, anonymous, with CLOUD_STORAGE_EMULATOR_ENDPOINT from the environment.
    uri_fs, path = fs.FileSystem.from_uri(f"gs://anonymous@{bucket}/t/part-0.parquet")
    assert pq.read_table(path, filesystem=uri_fs).equals(table)
    # And what pyarrow writes, google-cloud-storage reads.
    blob = gcs_emulator.client().bucket(bucket).blob("t/part-0.parquet")
    assert blob.download_as_bytes()[:4] == b"PAR1"


def test_gcs_emulator_beam_filesystem_and_parquet(gcs_emulator):
    """Beam's gs:// filesystem, including WriteToParquet's finish step, without the credential search delay."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    bucket = gcs_emulator.create_bucket(_name("servers-beam"))
    t0 = time.monotonic()
    with FileSystems.create(f"gs://{bucket}/raw/hello.txt") as f:
        f.write(b"hello beam")
    assert time.monotonic() - t0 < 10, "Beam looked for credentials (the fake ADC file should stop that)"
    with FileSystems.open(f"gs://{bucket}/raw/hello.txt") as f:
        assert f.read() == b"hello beam"

    schema = pa.schema([("id", pa.string()), ("x", pa.int64())])
    rows = [{"id": f"r{i}", "x": i} for i in range(20)]
    with beam.Pipeline(runner="DirectRunner", options=PipelineOptions([])) as p:
        _ = p | beam.Create(rows) | beam.io.WriteToParquet(f"gs://{bucket}/out/part", schema, file_name_suffix=".parquet")
    matched = [m.path for m in FileSystems.match([f"gs://{bucket}/out/*.parquet"])[0].metadata_list]
    assert len(matched) == 1 and matched[0].endswith(".parquet")
    got = pq.read_table(f"{bucket}/out", filesystem=gcs_emulator.pyarrow_fs())
    assert sorted(got.column("id").to_pylist()) == sorted(r["id"] for r in rows)


def test_prometheus_scrapes_pushgateway(prometheus):
    job = _name("servers-job").replace("-", "_")
    prometheus.pushgateway.push_text(job, "# TYPE emmr_servers_test_total counter\nemmr_servers_test_total{outcome=\"ok\"} 42\n")
    assert query_value(prometheus.url, f'emmr_servers_test_total{{job="{job}",outcome="ok"}}') == 42.0
    # The Pushgateway is scraped with honor_labels, so the pushed job label is kept, and it is itself up.
    assert query(prometheus.url, 'up{job="pushgateway"} == 1')
    with pytest.raises(ValueError):
        query(prometheus.url, "sum(", timeout=1)


def test_prometheus_push_with_prometheus_client(prometheus):
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("emmr_servers_client_seconds", "a test gauge", registry=registry).set(1.5)
    push_to_gateway(prometheus.pushgateway.address, job="servers_client", registry=registry)
    assert query_value(prometheus.url, 'emmr_servers_client_seconds{job="servers_client"}') == 1.5
