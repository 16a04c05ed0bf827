"""The job leaves the process (issue #13, part 9).

- DataflowRunner with --dry_run=True, from the launch requests in deploy/flex-template/launch-*.json: Beam
  translates the whole job graph as it would submit it (no submission, no credentials; the gs:// paths the job
  checks before it starts live on the GCS emulator). The graphs are checked: the GPU accelerator service option
  and one SDK process per VM reach the job's environment, the streaming read is Dataflow's native Pub/Sub source,
  nothing in the graph refers to the in-process-only module beam_pipeline.acks, the worker start-up plugin is
  listed, and the transform names are the ones recorded in deploy/flex-template/transforms-*.txt (an in-place
  update of the streaming job maps old names to new ones: a changed name must be mapped, deploy/launch.sh).
- The batch job on the DirectRunner in multi_processing mode with two worker processes, and on the
  PortableRunner with an embedded job server: the same outputs as the DirectRunner's (state that only works
  inside one process would show here).
"""

from __future__ import annotations

import base64
import bz2
import glob
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipeline.run import run
from test_deploy import DEPLOY, LAUNCH_ENV, STREAMING_ENV, launch_request, render_body
from test_pipeline import tiny_model  # noqa: F401 - session fixture: a model with hand-set weights
from test_pipeline_batch import inputs, job_argv  # noqa: F401 - the batch inputs: synthetic + bad records
from test_pipeline import trained  # noqa: F401

TRANSFORMS = DEPLOY / "flex-template"
ACCELERATOR = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


# ------------------------------------------------------------------------------------------- dry-run graphs


def _upload_model(model: str, root: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    for name in os.listdir(model):
        with open(os.path.join(model, name), "rb") as src, FileSystems.create(f"{root}/model/{name}") as dst:
            dst.write(src.read())


def _pickles(proto) -> dict[str, bytes]:
    """transform name -> the raw pickles of its DoFn / WindowFn / CombineFn payloads (Beam: base64 of bz2 or zlib)."""
    from apache_beam.portability.api import beam_runner_api_pb2 as api

    def raw(payload: bytes) -> bytes:
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:
            return b""
        for decompress in (bz2.decompress, zlib.decompress):
            try:
                return decompress(data)
            except (OSError, ValueError, zlib.error):
                continue
        return b""

    out = {}
    for t in proto.components.transforms.values():
        if t.spec.urn == "beam:transform:pardo:v1":
            out[t.unique_name] = raw(api.ParDoPayload.FromString(t.spec.payload).do_fn.payload)
    for s in proto.components.windowing_strategies.values():
        out[f"windowing:{s.window_fn.urn}"] = raw(s.window_fn.payload)
    return out


def _names(proto) -> list[str]:
    """The transforms' names, without Beam's synthetic root (`ref_AppliedPTransform_...`)."""
    return sorted(t.unique_name for t in proto.components.transforms.values()
                  if t.unique_name and not t.unique_name.startswith("ref_AppliedPTransform_"))


@pytest.fixture(scope="module")
def graphs(gcs_emulator, tiny_model):  # noqa: F811
    """Both jobs built with DataflowRunner --dry_run=True from their launch requests."""
    bucket = gcs_emulator.create_bucket("emmr-dry-run")
    root = f"gs://{bucket}"
    _upload_model(tiny_model, root)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(f"{root}/inbox/part-0.parquet") as f:
        f.write(b"PAR1")  # the job only checks that the glob matches
    env = {**LAUNCH_ENV, "MODEL": f"{root}/model", "INPUT": f"{root}/inbox/*.parquet",
           "OUTPUT": f"{root}/predictions/part", "DEAD_LETTER": f"{root}/dead-letters/part",
           "TEMP_LOCATION": f"{root}/tmp"}
    out = {}
    streaming = {**STREAMING_ENV, "MODEL": env["MODEL"], "TEMP_LOCATION": env["TEMP_LOCATION"]}
    follow = {**streaming, "MODEL_PATTERN": f"{root}/models/*/checkpoint.json"}
    for kind, kind_env in (("batch", env), ("streaming", streaming), ("streaming-follow", follow)):
        request = launch_request(kind.split("-")[0], kind_env)
        argv = render_body.launcher_argv(request, kind_env["PROJECT"], kind_env["REGION"]) + ["--dry_run=True"]
        result = run(argv)
        out[kind] = {"request": request, "argv": argv, "job": result.job, "proto": result.job.proto_pipeline}
    return out


def _environment(job):
    from apache_beam.runners.dataflow.internal import apiclient

    return apiclient.Environment(packages=[], options=job.options, environment_version="test",
                                 proto_pipeline_staged_url="gs://x/pipeline.pb", proto_pipeline=job.proto_pipeline).proto


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["batch", "streaming"])
def test_the_dry_run_graph_carries_the_gpu_and_worker_settings(graphs, kind):
    g = graphs[kind]
    environment = _environment(g["job"])
    assert ACCELERATOR in list(environment.service_options)
    assert "no_use_multiple_sdk_containers" in list(environment.experiments)
    options = dict(environment.sdk_pipeline_options)["options"]
    assert options["device"] == "cuda" and options["model"].startswith("gs://emmr-dry-run/")
    assert any(p.endswith("beam_pipeline.worker.ServeMetricsAtWorkerStart") for p in options["beam_plugins"])
    assert g["job"].proto.type_.name == ("JOB_TYPE_STREAMING" if kind == "streaming" else "JOB_TYPE_BATCH")
    assert g["job"].proto.name == g["request"]["launchParameter"]["jobName"]


@pytest.mark.integration
def test_the_streaming_graph_reads_with_dataflows_native_pubsub_source(graphs):
    from apache_beam.portability import common_urns

    proto = graphs["streaming"]["proto"]
    reads = [t for t in proto.components.transforms.values() if t.spec.urn == common_urns.composites.PUBSUB_READ.urn]
    assert len(reads) == 1 and reads[0].unique_name.startswith("Read/")
    assert b"emmr-input" in reads[0].spec.payload  # the subscription of the launch request


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["batch", "streaming"])
def test_no_in_process_module_reaches_the_workers(graphs, kind):
    pickles = _pickles(graphs[kind]["proto"])
    assert sum(1 for p in pickles.values() if b"beam_pipeline" in p) >= 5  # the scan sees our DoFns
    for name, raw in pickles.items():
        for module in (b"beam_pipeline.acks", b"beam_pipeline.direct_pubsub", b"AckAfter"):
            assert module not in raw, (name, module)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["batch", "streaming"])
def test_transform_names_are_stable(graphs, kind):
    """The names are recorded; a change must come with a transform name mapping for `launch.sh update`."""
    names = _names(graphs[kind]["proto"])
    ours = {Path(f).name for f in glob.glob(str(DEPLOY.parent / "beam_pipeline" / "*.py"))}
    assert not [n for n in names if any(f"lambda at {f}:" in n for f in ours)], "a name made of a line number"
    recorded = (TRANSFORMS / f"transforms-{kind}.txt").read_text().split("\n")
    assert names == [n for n in recorded if n and not n.startswith("#")], (
        f"the {kind} job's transform names changed: update deploy/flex-template/transforms-{kind}.txt and, for the "
        "streaming job, map the old names to the new ones in deploy/launch.sh (TRANSFORM_NAME_MAPPING)")


# ------------------------------------------------------------------------------------------- other runners


def _outputs(folder: Path):
    predictions = pq.read_table(glob.glob(f"{folder}/predictions/part-*.parquet")).sort_by("id")
    dead = pq.read_table(glob.glob(f"{folder}/dead_letters/part-*.parquet")).sort_by([("id", "ascending"),
                                                                                      ("error_kind", "ascending")])
    return predictions, dead


@pytest.mark.slow
def test_the_batch_job_gives_the_same_outputs_on_multi_process_and_portable_runners(inputs, tmp_path):  # noqa: F811
    """Two worker processes (multi_processing), and the portable runner with its job server embedded: the same
    predictions and dead letters as the DirectRunner in one process, and the same summary."""
    runs = {
        "direct": [],
        "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    }
    summaries, outputs = {}, {}
    for name, extra in runs.items():
        argv = job_argv(inputs, tmp_path / name)
        if name == "portable":
            argv = [a for a in argv if not a.startswith("--runner")]
        summaries[name] = run(argv + extra)
        outputs[name] = _outputs(tmp_path / name)
    base_p, base_d = outputs["direct"]
    for name in ("multi_processing", "portable"):
        s, (p, d) = summaries[name], outputs[name]
        assert s.conserved and s.state.endswith("DONE"), name
        assert (s.records_in, s.predictions, s.dead_letters, s.dead_letters_by_reason, s.predictions_by_label) == (
            summaries["direct"].records_in, summaries["direct"].predictions, summaries["direct"].dead_letters,
            summaries["direct"].dead_letters_by_reason, summaries["direct"].predictions_by_label), name
        for column in ("id", "label", "label_index", "missing", "key_missing", "key_modality", "ensemble_used"):
            assert p.column(column).equals(base_p.column(column)), (name, column)
        np.testing.assert_allclose(np.stack(p.column("probabilities").to_pylist()),
                                   np.stack(base_p.column("probabilities").to_pylist()), rtol=1e-5, atol=1e-7)
        for column in ("id", "source", "error_kind", "payload"):
            assert d.column(column).equals(base_d.column(column)), (name, column)


@pytest.mark.integration
def test_a_streaming_job_following_a_model_pattern_watches_it_through_a_side_input(graphs):
    """--model_pattern on Dataflow: WatchFilePattern -> VerifyModel -> RunInference's side input (the handler's
    update_model_path swaps between batches); the rest of the graph keeps its names, so an in-place update from a
    job without it needs no mapping."""
    names = _names(graphs["streaming-follow"]["proto"])
    assert any(n.startswith("ModelUpdates/WatchModels/") for n in names)
    assert "ModelUpdates/VerifyModel" in names
    from apache_beam.portability.api import beam_runner_api_pb2 as api

    with_side = [t.unique_name for t in graphs["streaming-follow"]["proto"].components.transforms.values()
                 if t.unique_name.startswith("Score/") and t.spec.urn == "beam:transform:pardo:v1"
                 and api.ParDoPayload.FromString(t.spec.payload).side_inputs]
    assert with_side, "RunInference takes the models as a side input"
    base = set(_names(graphs["streaming"]["proto"]))
    assert base - set(names) == set(), sorted(base - set(names))
