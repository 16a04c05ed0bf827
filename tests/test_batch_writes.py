"""Batch Parquet outputs (beam_pipeline/batch_writes.py): a temporary file per bundle, moved to
`<prefix>-SSSSS-of-NNNNN.parquet` once every bundle is done, then `_SUCCESS`; what a retried bundle or a retried
finishing step leaves behind."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline as beam_testing

from beam_pipeline.batch_writes import SUCCESS, WriteRunFiles, _FinishRun, _WriteBundleFiles, temp_folder

SCHEMA = pa.schema([("id", pa.string()), ("score", pa.float32())], metadata={b"emmr": b"test"})


def table(ids) -> pa.Table:
    return pa.table({"id": [str(i) for i in ids], "score": [float(i) for i in ids]}, schema=SCHEMA)


def bundle(fn: _WriteBundleFiles, tables) -> list:
    """One bundle through the DoFn as a runner calls it: its reports, (output, temporary file), unkeyed as the
    GroupByKey hands them to the finishing step."""
    fn.start_bundle()
    for t in tables:
        assert list(fn.process(t) or []) == []
    return [wv.value[1] for wv in fn.finish_bundle() or []]


def outputs(tmp_path):
    return {"predictions": (f"{tmp_path}/pred/part-run1", SCHEMA), "dead_letters": (f"{tmp_path}/dead-run1", SCHEMA)}


def test_bundles_become_numbered_files_then_success_lists_them(tmp_path):
    outs = outputs(tmp_path)
    write = _WriteBundleFiles("predictions", *outs["predictions"])
    reports = bundle(write, [table(range(3)), table(range(3, 5))]) + bundle(write, [table(range(5, 9))])
    assert len(reports) == 2 and all(os.path.exists(path) for _, path in reports)
    assert bundle(write, []) == []  # a bundle with no tables writes and reports nothing
    markers = list(_FinishRun(outs, "run1", "2026-07-20").process((0, [None, *reports])))
    pred = [f"{tmp_path}/pred/part-run1-0000{i}-of-00002.parquet" for i in range(2)]
    dead = [f"{tmp_path}/dead-run1-00000-of-00001.parquet"]
    assert sorted(pq.read_table(pred).column("id").to_pylist(), key=int) == [str(i) for i in range(9)]
    assert pq.read_schema(pred[0]).metadata == SCHEMA.metadata
    assert pq.read_table(dead[0]).num_rows == 0 and pq.read_schema(dead[0]) == SCHEMA  # no rows: the schema only
    assert sorted(markers) == [f"{tmp_path}/{SUCCESS}", f"{tmp_path}/pred/{SUCCESS}"]
    body = json.loads(open(markers[0]).read())
    assert body["files"] == sorted(pred + dead) and (body["run_id"], body["run_date"]) == ("run1", "2026-07-20")
    assert not os.path.exists(temp_folder(outs["predictions"][0])) and not os.path.exists(temp_folder(outs["dead_letters"][0]))
    assert sorted(os.listdir(tmp_path / "pred")) == sorted([SUCCESS, *(os.path.basename(p) for p in pred)])


def test_an_unreported_bundle_file_is_dropped_and_a_retried_finish_moves_nothing_twice(tmp_path):
    outs = outputs(tmp_path)
    write = _WriteBundleFiles("predictions", *outs["predictions"])
    kept = bundle(write, [table(range(4))])
    failed_attempt = bundle(write, [table(range(4))])  # a bundle the runner retried: its report never committed
    finish = _FinishRun(outs, "run1", "2026-07-20")
    first = list(finish.process((0, [None, *kept])))
    done = f"{tmp_path}/pred/part-run1-00000-of-00001.parquet"
    assert pq.read_table(done).num_rows == 4 and not os.path.exists(failed_attempt[0][1])
    before = {f: open(f, "rb").read() for f in (done, f"{tmp_path}/dead-run1-00000-of-00001.parquet")}
    assert list(finish.process((0, [None, *kept]))) == first  # a retried finish: moved already, nothing lost
    assert {f: open(f, "rb").read() for f in before} == before


def test_finishing_lists_the_runs_own_files_only(tmp_path, monkeypatch):
    """An output folder that holds earlier runs' files (a daily job writing to one folder) is not listed whole:
    on gs:// that listing grows with every run. The earlier run's files stay as they were."""
    outs = outputs(tmp_path)
    os.makedirs(tmp_path / "pred")
    earlier = [tmp_path / "pred" / f"part-run0-0000{i}-of-00002.parquet" for i in range(2)]
    for f in earlier:
        pq.write_table(table([i for i in range(3)]), f)
    listed, match = [], FileSystems.match

    def recording_match(patterns, *args, **kwargs):
        found = match(patterns, *args, **kwargs)
        listed.extend(m.path for r in found for m in r.metadata_list)
        return found

    monkeypatch.setattr(FileSystems, "match", recording_match)
    write = _WriteBundleFiles("predictions", *outs["predictions"])
    reports = bundle(write, [table(range(3))]) + bundle(write, [table(range(3, 5))])
    list(_FinishRun(outs, "run1", "2026-07-20").process((0, [None, *reports])))
    assert listed and not set(listed) & {str(f) for f in earlier}
    assert all(pq.read_table(f).num_rows == 3 for f in earlier)
    assert len(json.loads((tmp_path / "pred" / SUCCESS).read_text())["files"]) == 3  # its own 2 files + dead letters


def test_the_transform_on_the_direct_runner(tmp_path):
    outs = outputs(tmp_path)
    with beam_testing.TestPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        tables = {"predictions": p | "Pred" >> beam.Create([table(range(5)), table(range(5, 7))]),
                  "dead_letters": p | "Dead" >> beam.Create([table([99])])}
        tables | WriteRunFiles(outs, "run1", "2026-07-20")
    files = json.loads((tmp_path / SUCCESS).read_text())["files"]
    assert json.loads((tmp_path / "pred" / SUCCESS).read_text())["files"] == files
    assert sum(pq.read_metadata(f).num_rows for f in files if "/pred/" in f) == 7
    assert [pq.read_table(f).column("id").to_pylist() for f in files if "/dead-" in f] == [["99"]]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".temp")]
