"""The scoring job without a runner: options, decoding and validation, padding, the model handler (on a tiny
model whose outputs are known exactly), output formatting, dead letters, metrics.

Also the shared fixtures of the pipeline tests (tests/test_pipeline_*.py import them): `tiny_model` (hand-set
weights) and `trained` (synthetic data and a model trained by the real `emmr` CLI, made once per session).
"""

from __future__ import annotations

import base64
import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from beam_pipeline import dead_letters, metrics, outputs
from beam_pipeline.decode import Decoder, decode_chunk, decode_message_record, event_times
from beam_pipeline.elements import NO_TIME, ParquetChunk, ScoringBatch
from beam_pipeline.handler import EMMRModelHandler, LoadedModel, ModelInfo, ScoredBatch, score_robustly
from beam_pipeline.options import OptionsError, ScoringOptions, check_options
from beam_pipeline.padding import Padder, canonical_table
from beam_pipeline.pipeline import ModelSpec, prepare
from beam_pipeline.samples import bad_records
from emmr import checkpoint
from emmr.batch import ModalityBatch, from_arrow, modality_array
from emmr.config import ModelConfig
from emmr.nn.emmr import EMMR
from emmr.scorer import Scorer, Scores
from schemas.arrow import MAX_PAYLOAD_BYTES, TIMESTAMP, input_schema, prediction_schema
from schemas.message import encode_record
from schemas.modality import ModalitySpec
from schemas.validate import validate_output

# ------------------------------------------------------------------------------------------- fixtures

TINY = ModelConfig(
    modalities=(ModalitySpec("a", 3, 2), ModalitySpec("b", 2, 3), ModalitySpec("c", 4, 1)),
    label_names=("neg", "neu", "pos"), hidden=4, heads=2, ffn=8, dropout=0.0, ae_dims=(4, 3, 2), mmin_blocks=1)
# Every weight is zero, so every head outputs its last bias (the representations are all zero):
FULL = [0.0, 1.0, 2.0]  # the backbone's Eq. 8: "pos"
# the backbone's Eq. 9: key scores 1 - sum_c p_full p_without (threshold 0.5): a 0.49, b 0.76, c 0.71 -> b, c key
WITHOUT = {"a": [0.0, 1.0, 2.0], "b": [2.0, 0.0, 1.0], "c": [0.0, 3.0, 1.0]}
ENSEMBLE = [3.0, 0.0, 0.0]  # Eq. 13's head: "neg"


def make_tiny_model(path: str) -> str:
    """Save EMMR(TINY) with every parameter zero except the heads' last biases; returns the model version."""
    model = EMMR(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        heads = model.heads[model.backbone]
        heads.full.classify[-1].bias.copy_(torch.tensor(FULL))
        for k, m in enumerate(TINY.modality_names):
            heads.without[k].classify[-1].bias.copy_(torch.tensor(WITHOUT[m]))
        model.ensemble.head.bias.copy_(torch.tensor(ENSEMBLE))
    return checkpoint.save(path, model, method="emmr", train_config={}, metrics={}, data_fingerprint={})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tiny-model"))
    make_tiny_model(path)
    return path


def _emmr(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "emmr.cli", *args], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """Synthetic records (small preset, 30 % missing one modality) and a model trained on them by `emmr train`.

    Made once per session even when several test modules import this fixture (it is cached on disk).
    """
    root = tmp_path_factory.getbasetemp() / "pipeline-trained"
    data, model = root / "data", root / "model"
    if not (model / "checkpoint.json").exists():
        _emmr("synth", "--out", str(data), "--records", "300", "--seed", "1", "--preset", "small",
              "--missing-rate", "0.3")
        _emmr("train", "--data", str(data), "--out", str(model), "--epochs", "1", "--teacher-epochs", "1",
              "--no-progress", "--threads", "1")
    return {"data": str(data), "model": str(model), "files": sorted(str(p) for p in data.glob("*.parquet"))}


def tiny_records(missing: list[tuple[str, ...]], seed: int = 0) -> pa.Table:
    """Input v1 rows for TINY, row i missing the modalities missing[i] (random values elsewhere)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, miss in enumerate(missing):
        row = {"id": f"r{i}", "label": i % 3, "event_time": None}
        for m in TINY.modalities:
            row[m.name] = None if m.name in miss else rng.normal(size=(m.max_len, m.dim)).tolist()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=input_schema(TINY.modalities))


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=np.float64))
    return e / e.sum()


def as_batch(t: pa.Table, modalities=TINY.modalities, source: str = "mem") -> ScoringBatch:
    t = canonical_table(t, modalities)
    return ScoringBatch(table=t, event_time_us=event_times(t), publish_time_us=None, source=source,
                        rows=np.arange(t.num_rows))


# ------------------------------------------------------------------------------------------- options

GOOD = ["--input", "data/*.parquet", "--output", "out/p", "--dead_letter", "out/d", "--model", "ckpt"]


def check(*argv: str):
    return check_options(ScoringOptions(list(argv)))


def test_options_resolve_a_batch_job():
    c = check(*GOOD, "--batch_size", "64")
    assert (c.mode, c.input, c.output, c.dead_letter, c.dead_letter_is_topic, c.batch_size) == (
        "batch", "data/*.parquet", "out/p", "out/d", False, 64)
    assert c.metrics_port == 0 and c.device == "cpu" and c.autocast is None and c.job_name == "emmr-score"


def test_options_pubsub_input_makes_a_streaming_job_with_a_metrics_port():
    c = check("--input_subscription", "projects/p/subscriptions/in-sub", "--output_topic", "projects/p/topics/out",
              "--dead_letter", "projects/p/topics/dead", "--model", "gs://b/ckpt")
    assert c.streaming and c.dead_letter_is_topic and c.metrics_port == 9464
    assert check("--input_topic", "projects/p/topics/input", "--output", "o", "--dead_letter", "d", "--model", "m",
                 "--metrics_port", "-1").metrics_port == 0


@pytest.mark.parametrize("argv, problem", [
    (["--output", "o", "--dead_letter", "d", "--model", "m"], "exactly one of --input"),
    (GOOD + ["--input_subscription", "projects/p/subscriptions/sss"], "exactly one of --input"),
    (GOOD + ["--streaming"], "bounded source"),
    (["--input", "i", "--dead_letter", "d", "--model", "m"], "--output"),
    (GOOD + ["--output_topic", "projects/p/topics/out"], "needs a streaming job"),
    (["--input", "i", "--output", "o", "--model", "m"], "--dead_letter is required"),
    (["--input", "i", "--output", "o", "--model", "m", "--dead_letter", "projects/p/topics/dead"], "streaming job"),
    (["--input", "i", "--output", "o", "--dead_letter", "d"], "--model"),
    (GOOD + ["--device", "gpu"], "expected cpu, cuda or cuda:N"),
    (GOOD + ["--batch_size", "0"], "--batch_size"),
    (GOOD + ["--output_topic", "topic"], "projects/<project>/topics/<id>"),
    (["--input_subscription", "sub", "--output", "o", "--dead_letter", "d", "--model", "m"], "subscriptions"),
    (["--input_topic", "projects/p/topics/input", "--output", "o", "--dead_letter", "d", "--model", "m",
      "--batch_duration_s", "0"], "--batch_duration_s"),
    (["--input_topic", "projects/p/topics/input", "--output", "o", "--dead_letter", "d", "--model", "m",
      "--pushgateway", "127.0.0.1:9091"], "--pushgateway is for batch jobs"),
    (GOOD + ["--model_copies", "0"], "--model_copies"),
])
def test_options_reject_bad_combinations(argv, problem):
    with pytest.raises(OptionsError) as e:
        check(*argv)
    assert problem in str(e.value)


def test_options_name_every_problem_at_once():
    with pytest.raises(OptionsError) as e:
        check("--batch_size", "0", "--device", "tpu")
    assert len(e.value.problems) >= 5  # input, output, dead letter, model, device, batch size


def test_prepare_reads_the_model_and_rejects_what_cannot_run(tiny_model, tmp_path):
    pq.write_table(tiny_records([()]), tmp_path / "part-0.parquet")
    job = ["--input", str(tmp_path / "*.parquet"), "--output", "o", "--dead_letter", "d", "--runner", "DirectRunner"]
    config, spec = prepare(ScoringOptions([*job, "--model", tiny_model]))
    assert spec.config == TINY and spec.version == checkpoint.read_meta(tiny_model)["model_version"]
    with pytest.raises(OptionsError, match="--model .*checkpoint.json"):
        prepare(ScoringOptions([*job, "--model", str(tmp_path)]))
    with pytest.raises(OptionsError, match="--input .*no file matches"):
        prepare(ScoringOptions([*job, "--model", tiny_model, "--input", str(tmp_path / "*.csv")]))
    if not torch.cuda.is_available():
        with pytest.raises(OptionsError, match="--device 'cuda'.*no CUDA device"):
            prepare(ScoringOptions([*job, "--model", tiny_model, "--device", "cuda"]))


# ------------------------------------------------------------------------------------------- decoding


def test_decode_chunk_keeps_valid_rows_compact_in_slices_and_the_handler_pads_them(trained):
    spec = ModelSpec.read(trained["model"])
    table = pq.read_table(trained["files"][0])
    chunk = ParquetChunk("data/part.parquet", 1000, table)
    batches, letters = decode_chunk(chunk, Decoder(spec.config.modalities, spec.config.num_classes, 64))
    assert letters == []
    assert [len(b) for b in batches] == [64] * (table.num_rows // 64) + ([table.num_rows % 64] if table.num_rows % 64 else [])
    assert np.concatenate([b.ids for b in batches]).tolist() == table.column("id").to_pylist()
    assert np.concatenate([b.rows for b in batches]).tolist() == list(range(1000, 1000 + table.num_rows))
    assert batches[1].source_of(0) == "data/part.parquet#row=1064"
    assert all(b.table.schema.equals(input_schema(spec.config.modalities)) for b in batches)  # canonical, unpadded
    whole = from_arrow(table, spec.config.modalities)
    padder = Padder(spec.config.modalities)
    padded = []
    for b in batches:  # each result views the padder's buffers until the next pad: copy
        p = padder.pad([b.table])
        padded.append((p, {m: p.features[m].copy() for m in spec.config.modality_names}))
    for m in spec.config.modality_names:  # padding: (B, max_len, dim), zeros beyond each length, length 0 = missing
        np.testing.assert_array_equal(np.concatenate([f[m] for _, f in padded]), whole.features[m])
        np.testing.assert_array_equal(np.concatenate([p.lengths[m] for p, _ in padded]), whole.lengths[m])
    again = padder.pad([b.table for b in batches])  # several elements at once, into the same (grown) buffers
    for m in spec.config.modality_names:
        np.testing.assert_array_equal(again.features[m], whole.features[m])
    assert (np.concatenate([p.lengths[m] for p, _ in padded for m in spec.config.modality_names]) == 0).any()


def test_batch_elements_hold_about_element_bytes_and_pickle_only_their_own_rows(trained):
    spec = ModelSpec.read(trained["model"])
    table = pq.read_table(trained["files"][0])
    canonical = canonical_table(table, spec.config.modalities)
    per_record = canonical.nbytes / canonical.num_rows
    decoder = Decoder(spec.config.modalities, spec.config.num_classes, 8, element_bytes=int(50.5 * per_record))
    batches, _ = decode_chunk(ParquetChunk("part.parquet", 0, table), decoder)
    assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1) and sum(map(len, batches)) == table.num_rows
    assert spec.decoder(8).element_rows(canonical) > 8  # the job's elements: more than a model batch of small records
    assert Decoder(spec.config.modalities, 3, 512, element_bytes=1).element_rows(canonical) == 512  # never fewer
    piece = batches[1]  # a zero-copy slice: pickled alone, it would carry the whole table's buffers
    assert piece.table.get_total_buffer_size() > 2 * piece.table.nbytes
    data = pickle.dumps(piece)
    assert len(data) < 1.5 * piece.table.nbytes + 4096
    back = pickle.loads(data)
    assert back.table.equals(piece.table) and back.rows.tolist() == piece.rows.tolist() and back.source == piece.source


def test_handler_cuts_large_elements_into_model_batches(trained):
    handler = EMMRModelHandler(trained["model"], batch_size=16)
    model = handler.load_model()
    spec = ModelSpec.read(trained["model"])
    table = pq.read_table(trained["files"][0]).slice(0, 70)
    element = decode_chunk(ParquetChunk("part.parquet", 0, table), Decoder(spec.config.modalities, 3, 1000))[0][0]
    sizes = []
    real = model.score
    model.score = lambda records: sizes.append(len(records)) or real(records)
    (scored,) = handler.run_inference([element], model)
    assert sizes == [16, 16, 16, 16, 6] and not scored.failures
    direct = Scorer.load(trained["model"]).score(from_arrow(table, spec.config.modalities))
    np.testing.assert_allclose(scored.scores.probabilities, direct.probabilities, rtol=1e-5, atol=1e-6)
    assert scored.present.tolist() == direct_present(table, spec).tolist()


def test_the_job_s_elements_are_sized_from_arrow_not_by_pickling_them(trained):
    """Beam samples element sizes by encoding them with the PCollection's coder: the job's elements declare a coder
    whose estimate reads Arrow's byte counts (beam_pipeline/coders.py), and which encodes as Beam's PickleCoder."""
    from apache_beam import coders as beam_coders

    from beam_pipeline.coders import ElementCoder, register

    register()
    for t in (ParquetChunk, ScoringBatch, ScoredBatch, pa.Table):
        assert isinstance(beam_coders.registry.get_coder(t), ElementCoder)
    spec = ModelSpec.read(trained["model"])
    table = pq.read_table(trained["files"][0])
    batch = decode_chunk(ParquetChunk("part.parquet", 0, table), Decoder(spec.config.modalities, 3, 32))[0][1]
    coder = ElementCoder()
    encoded = coder.encode(batch)
    assert encoded == beam_coders.PickleCoder().encode(batch)
    back = coder.decode(encoded)
    assert back.table.equals(batch.table) and back.rows.tolist() == batch.rows.tolist()
    assert 0.5 < coder.estimate_size(batch) / len(encoded) < 2  # about right, without encoding
    for t in (table, ParquetChunk("part.parquet", 0, table)):
        assert 0.5 < coder.estimate_size(t) / len(coder.encode(t)) < 2


def direct_present(table: pa.Table, spec: ModelSpec) -> np.ndarray:
    return from_arrow(table, spec.config.modalities).present()


def test_decode_chunk_sends_each_bad_record_to_a_dead_letter_with_its_reason(trained):
    spec = ModelSpec.read(trained["model"])
    table, expected = bad_records(spec.config.modalities, spec.config.num_classes)
    batches, letters = decode_chunk(ParquetChunk("bad.parquet", 10, table), spec.decoder(batch_size=4))
    # validation catches everything but "bad-huge" (finite but overflowing: the model's output tells)
    got = {(d.id, d.error_kind) for d in letters}
    want = {(i, k) for i, kinds in expected.items() for k in kinds if k not in (None, "non_finite_output")}
    assert got == want
    assert sorted(np.concatenate([b.ids for b in batches]).tolist()) == ["bad-duplicate", "bad-huge"]
    for d in letters:
        row = int(d.source.split("#row=")[1]) - 10
        assert d.source.startswith("bad.parquet#row=") and table.column("id")[row].as_py() == d.id
        assert d.id is None or repr(d.id) in d.error  # the message names the record
        back = pa.ipc.open_stream(d.payload).read_all()  # the payload is the row, as message v1 encodes it
        assert back.num_rows == 1 and back.column("id")[0].as_py() == d.id
    assert len(letters) + sum(len(b) for b in batches) == table.num_rows


def test_decode_chunk_an_unreadable_file_is_one_dead_letter():
    batches, letters = decode_chunk(ParquetChunk("x.parquet", 0, None, "ArrowInvalid: magic bytes"),
                                    Decoder(TINY.modalities, 3))
    assert batches == [] and [(d.id, d.source, d.error_kind) for d in letters] == [(None, "x.parquet", "unreadable_file")]


def test_event_times_null_and_units():
    t = pa.table({"event_time": pa.array([1_500, None], pa.timestamp("ms"))})
    assert event_times(t).tolist() == [1_500_000, NO_TIME]
    assert event_times(pa.table({"id": ["a"]})).tolist() == [NO_TIME]


def _message(t: pa.Table, i: int = 0) -> tuple[bytes, dict]:
    return encode_record(t.slice(i, 1).to_batches()[0])


def test_decode_message_good_record():
    t = tiny_records([(), ("b",)])
    data, attributes = _message(t, 1)
    out = decode_message_record(data, attributes, "m-1", 1_000_000, Decoder(TINY.modalities, 3))
    assert isinstance(out, ScoringBatch) and out.ids.tolist() == ["r1"]
    assert out.publish_time_us.tolist() == [1_000_000] and out.source_of(0) == "pubsub:m-1"
    lengths = Padder(TINY.modalities).pad([out.table]).lengths
    assert lengths["b"].tolist() == [0] and lengths["a"].tolist() == [2]


@pytest.mark.parametrize("mangle, kind", [
    (lambda d, a: (b"not arrow", a), "corrupt_message"),
    (lambda d, a: (d, {k: v for k, v in a.items() if k != "schema_version"}), "bad_attributes"),
    (lambda d, a: (d, {**a, "schema_version": "2"}), "unknown_schema_version"),
    (lambda d, a: (d, {**a, "record_id": "someone-else"}), "bad_attributes"),
    (lambda d, a: (d + bytes(4 * 1024 * 1024), a), "oversized_message"),
])
def test_decode_message_bad_messages(mangle, kind):
    t = tiny_records([()])
    data, attributes = mangle(*_message(t))
    out = decode_message_record(data, attributes, "m-9", 0, Decoder(TINY.modalities, 3))
    assert isinstance(out, dead_letters.DeadLetter) and out.error_kind == kind and out.source == "pubsub:m-9"
    assert out.payload == data and out.id in ("r0", "someone-else")


def test_decode_message_invalid_record_names_its_id_and_field():
    t = tiny_records([()])
    a = t.column("a").to_pylist()
    a[0][1][2] = math.inf
    t = t.set_column(t.schema.get_field_index("a"), t.schema.field("a"), pa.array(a, t.schema.field("a").type))
    out = decode_message_record(*_message(t), "m-2", 0, Decoder(TINY.modalities, 3))
    assert (out.id, out.error_kind) == ("r0", "non_finite") and "'a'" in out.error


# ------------------------------------------------------------------------------------------- the handler

CASES = [(), ("a",), ("b",), ("b", "c"), ("a", "c")]


def expected_tiny(miss: tuple[str, ...]) -> dict:
    """What TINY must say about a record missing `miss` (the check and switch of Eq. 8-13, by hand)."""
    names = TINY.modality_names
    full = int(np.argmax(FULL))
    score = {m: 1.0 - float(softmax(FULL) @ softmax(WITHOUT[m])) for m in miss}
    pick = max(miss, key=lambda m: score[m]) if miss else None
    key = bool(miss) and score[pick] >= 0.5
    return {
        "probabilities": softmax(ENSEMBLE if key else FULL),
        "label_index": int(np.argmax(ENSEMBLE if key else FULL)),
        "key_missing": key,
        "key_missing_score": score[pick] if miss else 0.0,
        "key_modality": pick if key else None,
        "label_full": full,
        "label_pair": int(np.argmax(WITHOUT[pick])) if miss else None,
        "ensemble_used": key,
        "missing": [m for m in names if m in miss],
    }


def test_handler_scores_a_tiny_model_exactly(tiny_model):
    handler = EMMRModelHandler(tiny_model, batch_size=8)
    model = handler.load_model()
    t = tiny_records(CASES)
    batch = as_batch(t)
    one, two = batch.take(np.arange(2)), batch.take(np.arange(2, len(CASES)))  # two elements, one model call
    scored = list(handler.run_inference([one, two], model))
    assert [len(s.batch) for s in scored] == [2, 3] and all(not s.failures for s in scored)
    table = pa.concat_tables([outputs.prediction_table(s) for s in scored])
    assert validate_output(table, prediction_schema()).errors == []
    rows = table.to_pylist()
    for i, (row, miss) in enumerate(zip(rows, CASES)):
        want = expected_tiny(miss)
        assert row["id"] == f"r{i}"
        np.testing.assert_allclose(row["probabilities"], want["probabilities"], rtol=1e-6)
        assert row["label_index"] == want["label_index"] and row["label"] == TINY.label_names[want["label_index"]]
        for k in ("key_missing", "key_modality", "label_full", "label_pair", "ensemble_used", "missing"):
            assert row[k] == want[k], (i, k)
        assert row["key_missing_score"] == pytest.approx(want["key_missing_score"], rel=1e-5)
        assert row["model_version"] == checkpoint.read_meta(tiny_model)["model_version"]
    # the hand computation covers every branch: not key, key, two missing (the higher score wins)
    assert [r["key_modality"] for r in rows] == [None, None, "b", "b", "c"]


def test_handler_batching_and_sharing_are_configurable():
    batch = EMMRModelHandler("m", batch_size=32)
    assert batch.batch_elements_kwargs()["max_batch_size"] == 32 and batch.batch_elements_kwargs()["element_size_fn"](range(5)) == 5
    assert not batch.should_skip_batching()  # batch mode: RunInference groups small row groups' batches
    stream = EMMRModelHandler("m", batch_size=16, batch_duration_s=0.25, model_copies=2)
    assert stream.should_skip_batching()  # streaming: the job batched the messages before decoding
    assert stream.share_model_across_processes() and stream.model_copies() == 2
    assert not batch.share_model_across_processes()


class PoisonedModel(LoadedModel):
    """The real loaded model, made to raise on any batch that holds a record with a poisoned id (an error a record
    can cause: an index a value selects), or to fail like the machine does on any batch with a `broken-` record."""

    fault: BaseException = RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

    def score(self, records: ModalityBatch) -> Scores:
        if any(str(i).startswith("poison") for i in records.ids):
            raise IndexError("index 9 is out of bounds for dimension 0 with size 3 (injected)")
        if any(str(i).startswith("broken") for i in records.ids):
            raise self.fault
        return super().score(records)


def test_a_failing_record_does_not_fail_its_neighbours(tiny_model):
    scorer = Scorer.load(tiny_model)
    t = tiny_records(CASES * 4)
    ids = [f"r{i}" for i in range(t.num_rows)]
    ids[7] = "poison-7"
    t = t.set_column(0, t.schema.field("id"), pa.array(ids))
    records = from_arrow(t, TINY.modalities)
    outcome = score_robustly(PoisonedModel(scorer, "cpu"), records, 3)
    assert outcome.failures.keys() == {7} and outcome.failures[7][0] == "inference_error"
    clean = scorer.score(records)
    keep = np.arange(len(ids)) != 7
    np.testing.assert_allclose(outcome.scores.probabilities[keep], clean.probabilities[keep], rtol=1e-6)
    np.testing.assert_array_equal(outcome.scores.label_index[keep], clean.label_index[keep])


INFRASTRUCTURE_FAULTS = {
    "cuda_illegal_access": RuntimeError("CUDA error: an illegal memory access was encountered"),
    "device_side_assert": RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA"),
    "accelerator_error": torch.AcceleratorError("unspecified launch failure"),
    "cublas": RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, ...)`"),
    "driver_mismatch": RuntimeError("The NVIDIA driver on your system is too old (found version 11040)."
                                    " Please update your GPU driver; driver version 12.4 is needed"),
    "not_built_for_device": NotImplementedError("Could not run 'aten::empty_strided' with arguments from the 'CUDA' backend"),
    "host_memory": MemoryError(),
    "disk": OSError(28, "No space left on device"),
    "missing_module": ModuleNotFoundError("No module named 'triton'"),
}


@pytest.mark.parametrize("fault", sorted(INFRASTRUCTURE_FAULTS))
def test_an_infrastructure_fault_fails_the_bundle_instead_of_dead_lettering_records(tiny_model, fault):
    """A broken CUDA context or driver says nothing about the records: bisecting would dead-letter the whole input.
    The error propagates (the runner fails the bundle and retries it), out of score_robustly and out of the
    handler past RunInference's exception output (which takes BatchFailed only)."""
    from beam_pipeline.faults import BatchFailed, caused_by_records

    error = INFRASTRUCTURE_FAULTS[fault]
    assert not caused_by_records(error)
    scorer = Scorer.load(tiny_model)
    t = tiny_records(CASES)
    t = t.set_column(0, t.schema.field("id"), pa.array(["r0", "broken-1", "r2", "r3", "r4"]))
    poisoned = PoisonedModel(scorer, "cpu")
    poisoned.fault = error
    with pytest.raises(type(error)) as raised:
        score_robustly(poisoned, from_arrow(t, TINY.modalities), 3)
    assert raised.value is error
    handler = EMMRModelHandler(tiny_model, batch_size=8)
    handler.load_model()
    with pytest.raises(type(error)) as raised:
        handler.run_inference([as_batch(t)], poisoned)
    assert raised.value is error and not isinstance(raised.value, BatchFailed)


@pytest.mark.parametrize("error", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x7 and 5x3)"),
    RuntimeError("the model returned 3 rows for 4 records"), IndexError("index 9 is out of bounds"),
    ValueError("cannot reshape array"), FloatingPointError("overflow"), KeyError("a"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), torch.OutOfMemoryError("CUDA out of memory."),
])
def test_errors_records_can_cause_are_split_not_raised(error):
    """What a record can cause (or a smaller batch cures: accelerator memory) is bisected and dead-lettered."""
    from beam_pipeline.faults import caused_by_records

    assert caused_by_records(error)


def test_a_record_caused_error_outside_the_model_call_becomes_batch_failed(tiny_model):
    """Escaping score_elements, an error records can cause goes to RunInference's exception output (BatchFailed)."""
    from beam_pipeline.faults import BatchFailed

    class Broken(EMMRModelHandler):
        def score_elements(self, elements, model):
            raise ValueError("a padded shape does not match (injected)")

    handler = Broken(tiny_model)
    with pytest.raises(BatchFailed, match="ValueError: a padded shape does not match"):
        handler.run_inference([as_batch(tiny_records(CASES))], handler.load_model())


def test_non_finite_outputs_become_failures(tiny_model):
    scorer = Scorer.load(tiny_model)

    class Overflowing(LoadedModel):
        def score(self, records):
            s = super().score(records)
            s.probabilities[1] = np.nan
            return s

    outcome = score_robustly(Overflowing(scorer, "cpu"), from_arrow(tiny_records(CASES), TINY.modalities), 3)
    assert outcome.failures == {1: ("non_finite_output", "the model returned non-finite probabilities")}


# ------------------------------------------------------------------------------------------- outputs

INFO = ModelInfo("v123", "cpu", "cpu", 0.5, ("neg", "neu", "pos"), ("a", "b", "c"))


def scored_by_hand(publish: bool = False) -> ScoredBatch:
    t = tiny_records([(), ("a", "c"), ("b",)])
    t = t.set_column(t.schema.get_field_index("event_time"), t.schema.field("event_time"),
                     pa.array([None, 1_000_000, 2_000_000], pa.int64()).cast(TIMESTAMP))
    b = as_batch(t)
    if publish:
        b.publish_time_us = np.array([9_000_000, 9_500_000, 9_750_000])
    scores = Scores(probabilities=np.array([[.7, .2, .1], [.1, .1, .8], [.3, .3, .4]], np.float32),
                    label_index=np.array([0, 2, 2]), key_missing=np.array([False, True, False]),
                    key_missing_score=np.array([0.0, 0.75, 0.25], np.float32), key_modality=np.array([-1, 2, -1]), label_full=np.array([0, 0, 2]),
                    label_pair=np.array([-1, 1, 2]), ensemble_used=np.array([False, True, False]))
    return ScoredBatch(b, scores, {2: ("non_finite_output", "x")}, INFO, scored_at_us=10_000_000)


def test_prediction_table_formats_prediction_v1_exactly():
    t = outputs.prediction_table(scored_by_hand(publish=True))
    assert validate_output(t, prediction_schema()).errors == [] and t.schema.metadata == prediction_schema().metadata
    rows = t.to_pylist()
    assert [r["id"] for r in rows] == ["r0", "r1"]  # the failed record is not a prediction
    r0, r1 = rows
    assert (r0["label"], r0["label_index"], r0["missing"], r0["key_missing"], r0["key_modality"], r0["label_pair"]) == (
        "neg", 0, [], False, None, None)
    assert (r1["label"], r1["missing"], r1["key_missing"], r1["key_modality"], r1["label_full"], r1["label_pair"],
            r1["ensemble_used"]) == ("pos", ["a", "c"], True, "c", 0, 1, True)
    assert (r0["key_missing_score"], r1["key_missing_score"]) == (0.0, 0.75)
    np.testing.assert_allclose(r1["probabilities"], [.1, .1, .8], rtol=1e-6)
    assert r0["event_time"] is None and r1["event_time"].timestamp() == 1.0 and r1["scored_at"].timestamp() == 10.0
    assert (r0["latency_s"], r1["latency_s"]) == (1.0, 0.5) and r0["model_version"] == "v123"
    assert outputs.prediction_table(scored_by_hand()).column("latency_s").null_count == 2  # batch: no latency


def test_prediction_messages_are_json_with_attributes():
    [(data, attributes), _] = outputs.to_messages(outputs.prediction_table(scored_by_hand(publish=True)))
    body = json.loads(data)
    assert attributes == {"schema": "prediction", "schema_version": "1", "record_id": "r0",
                          "content_type": "application/json"}
    assert set(body) == set(prediction_schema().names) and body["id"] == "r0" and body["latency_s"] == 1.0
    assert body["scored_at"] == "1970-01-01T00:00:10+00:00"


def test_dead_letters_table_and_messages():
    scored = scored_by_hand()
    letters = dead_letters.for_records(scored.batch, [2], "non_finite_output", "the model returned NaN")
    t = dead_letters.table(letters + [dead_letters.DeadLetter(None, "pubsub:7", "corrupt_message", "bad", b"x" * (MAX_PAYLOAD_BYTES + 9), 5)])
    assert validate_output(t, dead_letters.SCHEMA).errors == []
    rows = t.to_pylist()
    assert (rows[0]["id"], rows[0]["source"], rows[0]["error_kind"]) == ("r2", "mem#row=2", "non_finite_output")
    assert rows[0]["pipeline_version"].startswith("emmr-score/") and len(rows[1]["payload"]) == MAX_PAYLOAD_BYTES
    back = pa.ipc.open_stream(rows[0]["payload"]).read_all()  # the record as decoded, one row
    assert back.column("id").to_pylist() == ["r2"] and back.column("b").to_pylist() == [None]
    assert back.column("a").to_pylist() == scored.batch.table.slice(2, 1).column("a").to_pylist()
    (data, attributes), (data2, attributes2) = dead_letters.to_messages(t)
    assert attributes["error_kind"] == "non_finite_output" and attributes["record_id"] == "r2"
    assert "record_id" not in attributes2 and base64.b64decode(json.loads(data2)["payload"]) == b"x" * MAX_PAYLOAD_BYTES


# ------------------------------------------------------------------------------------------- metrics


def test_metric_names_follow_prometheus_conventions():
    names = [m.name for m in metrics.ALL]
    assert len(set(names)) == len(names) and all(n.startswith("emmr_") for n in names)
    for m in metrics.ALL:
        assert (m.kind == metrics.COUNTER) == m.name.endswith("_total"), m.name
        assert "id" not in m.labels and m.help
    assert metrics.INFERENCE_LATENCY.beam_name == "emmr_inference_latency_microseconds"
    series = metrics.series_name("emmr_records_total", {"outcome": "predicted"})
    assert series == "emmr_records_total{outcome=predicted}" and metrics.parse_series(series) == (
        "emmr_records_total", {"outcome": "predicted"})


def test_summary_registry_exposes_the_batch_summary():
    from prometheus_client import generate_latest

    snap = metrics.Snapshot(
        counters={"emmr_input_records_total": 10, "emmr_records_total{outcome=predicted}": 7,
                  "emmr_records_total{outcome=dead_letter}": 3, "emmr_dead_letters_total{reason=too_long}": 3},
        distributions={"emmr_inference_latency_microseconds": (2, 1_500_000)},
        gauges={"emmr_model_info{version=v1,device=cpu,requested_device=cpu}": 1, "emmr_model_load_microseconds": 250_000})
    text = generate_latest(metrics.summary_registry(snap, 12.5, metrics.known_series(["a"], ["neg", "pos"]),
                                                    finished_at=100.0)).decode()
    for line in ['emmr_input_records_total 10.0', 'emmr_records_total{outcome="predicted"} 7.0',
                 'emmr_dead_letters_total{reason="too_long"} 3.0', 'emmr_predictions_total{label="neg"} 0.0',
                 'emmr_key_missing_total{modality="a"} 0.0', 'emmr_inference_latency_seconds_count 2.0',
                 'emmr_inference_latency_seconds_sum 1.5', 'emmr_model_load_seconds 0.25',
                 'emmr_model_info{device="cpu",requested_device="cpu",version="v1"} 1.0',
                 'emmr_job_duration_seconds 12.5', 'emmr_job_last_success_timestamp_seconds 100.0']:
        assert line in text, line
    assert snap.total(metrics.RECORDS) == 10 and snap.by_label(metrics.DEAD_LETTERS, "reason") == {"too_long": 3}
