"""The batch job end to end on the DirectRunner: TestPipeline + assert_that, then `run()` writing real files.

Predictions must equal what the model says when called directly on the same records; every bad record must
land in the dead letters with its reason; records in = predictions + dead letters.
"""

from __future__ import annotations

import glob
import json
import shutil

import numpy as np
import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline as beam_testing  # (not `TestPipeline`: pytest would try to collect it)
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.handler import EMMRModelHandler
from beam_pipeline.pipeline import build_pipeline, prepare
from beam_pipeline.report import JobSummary
from beam_pipeline.run import run
from beam_pipeline.samples import write_bad_records
from emmr.batch import from_arrow
from emmr.scorer import Scorer
from schemas.arrow import dead_letter_schema, prediction_schema
from schemas.validate import validate_input, validate_output
from test_pipeline import trained  # noqa: F401 - the session fixture: data and a model made by the emmr CLI

RUNNER = ["--runner=DirectRunner"]  # named explicitly: the same run where Prism can be downloaded and where not


@pytest.fixture(scope="module")
def inputs(trained, tmp_path_factory) -> dict:  # noqa: F811
    """A folder with the synthetic records and a file of bad records (plus a file that is not Parquet)."""
    folder = tmp_path_factory.mktemp("batch-input")
    for f in trained["files"]:
        shutil.copy(f, folder)
    spec = Scorer.load(trained["model"]).config
    expected = write_bad_records(str(folder), spec.modalities, spec.num_classes)
    tables = [pq.read_table(f) for f in trained["files"]] + [pq.read_table(folder / "bad-records.parquet")]
    records = sum(t.num_rows for t in tables) + 1  # the unreadable file counts as one record
    return {"glob": str(folder / "*.parquet"), "expected": expected, "tables": tables, "records": records,
            "model": trained["model"]}


def direct_scores(inputs) -> dict[str, tuple]:
    """id -> (probabilities, label index, key_missing, key modality, ensemble_used): the model called directly on
    the valid records of each file (as the job validates them, one file at a time)."""
    scorer = Scorer.load(inputs["model"])
    out = {}
    for t in inputs["tables"]:
        valid = validate_input(t, scorer.config.modalities, scorer.config.num_classes).valid
        t = t.filter(pa.array(valid))
        s = scorer.score(from_arrow(t, scorer.config.modalities))
        for i, rid in enumerate(t.column("id").to_pylist()):
            out[rid] = (s.probabilities[i], int(s.label_index[i]), bool(s.key_missing[i]), int(s.key_modality[i]),
                        bool(s.ensemble_used[i]))
    return {k: v for k, v in out.items() if np.isfinite(v[0]).all()}


def expected_dead_letters(inputs) -> list[tuple[str | None, str]]:
    out = []
    for rid, kinds in inputs["expected"].items():
        out += [(None if rid.endswith(".parquet") else rid, k) for k in kinds if k is not None]
    return sorted(out, key=str)


def job_argv(inputs, out, *extra: str) -> list[str]:
    return [*RUNNER, "--input", inputs["glob"], "--model", inputs["model"], "--output", f"{out}/predictions/part",
            "--dead_letter", f"{out}/dead_letters/part", "--batch_size", "64", *extra]


def check_predictions(inputs):
    want = direct_scores(inputs)

    def match(tables):
        t = pa.concat_tables(tables)
        assert validate_output(t, prediction_schema()).errors == []
        rows = {r["id"]: r for r in t.to_pylist()}
        assert len(rows) == t.num_rows == len(want), (t.num_rows, len(want))
        for rid, (probs, label, key, key_mod, ens) in want.items():
            r = rows[rid]
            np.testing.assert_allclose(r["probabilities"], probs, rtol=1e-4, atol=1e-6)
            assert (r["label_index"], r["key_missing"], r["ensemble_used"]) == (label, key, ens), rid
            assert (r["key_modality"] is None) == (key_mod < 0)
        assert any(r["missing"] for r in rows.values()) and any(r["key_missing"] for r in rows.values())

    return match


def check_dead_letters(inputs):
    want = expected_dead_letters(inputs)

    def match(tables):
        t = pa.concat_tables(tables)
        assert validate_output(t, dead_letter_schema()).errors == []
        assert sorted(zip(t.column("id").to_pylist(), t.column("error_kind").to_pylist()), key=str) == want

    return match


def test_batch_pipeline_matches_the_model_and_dead_letters_bad_records(inputs, tmp_path):
    options = PipelineOptions(job_argv(inputs, tmp_path))
    config, spec = prepare(options)
    with beam_testing.TestPipeline(options=PipelineOptions(RUNNER)) as p:
        out = build_pipeline(p, config, spec)
        assert_that(out.predictions, check_predictions(inputs), label="Predictions")
        assert_that(out.dead_letters, check_dead_letters(inputs), label="DeadLetters")
    n_pred, n_dead = len(direct_scores(inputs)), len(expected_dead_letters(inputs))
    assert n_pred + n_dead == inputs["records"]  # conservation, by construction of the expectations


def test_run_writes_prediction_and_dead_letter_parquet_and_reports_the_counts(inputs, tmp_path):
    summary = run(job_argv(inputs, tmp_path, "--summary_json", str(tmp_path / "summary.json"), "--job_name", "t1"))
    assert isinstance(summary, JobSummary) and summary.state.endswith("DONE")
    predictions = pq.read_table(glob.glob(f"{tmp_path}/predictions/part-*.parquet"))
    dead = pq.read_table(glob.glob(f"{tmp_path}/dead_letters/part-*.parquet"))
    assert predictions.schema.metadata == prediction_schema().metadata
    assert dead.schema.metadata == dead_letter_schema().metadata
    assert summary.records_in == inputs["records"] == predictions.num_rows + dead.num_rows
    assert (summary.predictions, summary.dead_letters, summary.conserved) == (predictions.num_rows, dead.num_rows, True)
    kinds = dead.column("error_kind").value_counts().to_pylist()
    assert summary.dead_letters_by_reason == {k["values"]: k["counts"] for k in kinds}
    assert sum(summary.predictions_by_label.values()) == summary.predictions
    flags = predictions.filter(predictions.column("key_missing")).column("key_modality").value_counts().to_pylist()
    assert {k: v for k, v in summary.key_missing_by_modality.items() if v} == {f["values"]: f["counts"] for f in flags}
    assert summary.model_version == predictions.column("model_version")[0].as_py()
    assert json.loads((tmp_path / "summary.json").read_text())["conserved"] is True


class FailingHandler(EMMRModelHandler):
    """The real handler, made to raise outside the model call, with an error records can cause, for any batch
    holding the record "bad-duplicate" (RunInference's exception output takes the batch)."""

    def score_elements(self, elements, model):
        if any("bad-duplicate" in e.ids.tolist() for e in elements):
            raise ValueError("a padded shape does not match (injected)")
        return super().score_elements(elements, model)


def test_an_exception_out_of_inference_dead_letters_its_whole_batch_and_nothing_else(inputs, tmp_path):
    options = PipelineOptions(job_argv(inputs, tmp_path))
    config, spec = prepare(options)
    handler = FailingHandler(spec.path, batch_size=config.batch_size)
    # "bad-duplicate" and "bad-huge" are the valid records of the bad file: one element, so one failed batch
    others = [d for d in expected_dead_letters(inputs) if d != ("bad-huge", "non_finite_output")]

    def dead_letters(tables):
        t = pa.concat_tables(tables)
        failed = t.filter(pc.equal(t.column("error_kind"), "inference_error"))
        ids = failed.column("id").to_pylist()
        assert {"bad-duplicate", "bad-huge"} <= set(ids) and len(ids) <= config.batch_size
        assert all("inference failed for its batch" in e and "injected" in e for e in failed.column("error").to_pylist())
        assert all(src.split("#row=")[1].isdigit() for src in failed.column("source").to_pylist())
        rest = t.filter(pc.not_equal(t.column("error_kind"), "inference_error"))
        assert sorted(zip(rest.column("id").to_pylist(), rest.column("error_kind").to_pylist()), key=str) == others

    with beam_testing.TestPipeline(options=PipelineOptions(RUNNER)) as p:
        out = build_pipeline(p, config, spec, handler=handler)
        assert_that(out.dead_letters, dead_letters, label="DeadLetters")
        counts = ((out.predictions, out.dead_letters)
                  | beam.Flatten() | beam.Map(lambda t: t.num_rows) | beam.CombineGlobally(sum))
        assert_that(counts, equal_to([inputs["records"]]), label="Conservation")


def test_a_model_shared_across_processes_scores_the_same(inputs, tmp_path):
    """--share_model: one model per machine behind Beam's MultiProcessShared proxy (large models on GPUs)."""
    shared = run(job_argv(inputs, tmp_path / "shared", "--share_model", "--model_copies", "1"))
    alone = run(job_argv(inputs, tmp_path / "alone"))
    assert shared.conserved and (shared.predictions, shared.dead_letters_by_reason) == (
        alone.predictions, alone.dead_letters_by_reason)
    a, b = (pq.read_table(glob.glob(f"{tmp_path}/{d}/predictions/part-*.parquet")).sort_by("id")
            for d in ("shared", "alone"))
    assert a.column("id").equals(b.column("id")) and a.column("label_index").equals(b.column("label_index"))
    np.testing.assert_allclose(np.stack(a.column("probabilities").to_pylist()),
                               np.stack(b.column("probabilities").to_pylist()), rtol=1e-5, atol=1e-7)


def test_run_builds_on_a_given_test_pipeline(inputs, tmp_path):
    summary = run(job_argv(inputs, tmp_path), test_pipeline=beam_testing.TestPipeline(options=PipelineOptions(RUNNER)))
    assert summary.conserved and summary.records_in == inputs["records"]
    assert glob.glob(f"{tmp_path}/predictions/part-*.parquet")
