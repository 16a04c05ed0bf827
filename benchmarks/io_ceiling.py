"""The job's I/O ceiling on CPU: the batch job with a no-op model against plain pyarrow doing the same I/O.

Small preset, N synthetic records (30 % miss one modality; emmr.synth.write). Three things take turns in
each round (benchmarks/common.py `interleave`):
  io_job    beam_pipeline.run.run --runner=DirectRunner on the N records with the model replaced by a no-op
            (benchmarks/pipeline_common.py NoOpModelHandler: constant Scores of the right shapes, no torch),
            everything else as served: read, validate, pad, batch, format, write predictions + dead letters,
            metrics, summary; start-up included
  pyarrow   pyarrow.parquet reading the job's columns of the same files, then writing a prediction table of
            the same rows and schema as the job writes (that table is made once, before timing)
  startup   the no-op job on a tiny input (--tiny records): its fixed start-up cost
Printed: records/s of both, start-up seconds, io_over_pyarrow_steady (start-up subtracted) and, last, the
headline io_over_pyarrow = pyarrow seconds / job seconds (median of per-round ratios; goal at least 0.7).

With --profile, one more no-op run under cProfile: its time by where the code lives (the job's own modules, Beam,
pyarrow, the rest) and the functions with the most time of their own.

  .venv/bin/python benchmarks/io_ceiling.py [--quick] [--profile] [--json runs/bench/io_ceiling.json]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.common import emit, environment, interleave, median, note, quartiles, ratio, ratios, write_json  # noqa: E402
from benchmarks.pipeline_common import (DEFAULT_WORK_DIR, data_dir, describe_machine, job_argv, model_dir,  # noqa: E402
                                        no_op_model, prediction_files, quiet_logs, run_job)
from emmr.config import preset  # noqa: E402
from schemas.arrow import prediction_schema  # noqa: E402


class PyarrowIO:
    """Read the job's input columns with pyarrow (row group by row group), write a prediction table of the same size."""

    def __init__(self, data: str, predictions: pa.Table, out: str):
        self.files = sorted(glob.glob(os.path.join(data, "*.parquet")))
        cfg = preset("small")
        self.columns = ["id", *cfg.modality_names, "label", "event_time"]
        self.predictions, self.out = predictions, out

    def __call__(self) -> int:
        shutil.rmtree(self.out, ignore_errors=True)
        os.makedirs(self.out)
        rows = 0
        for f in self.files:  # row group by row group, in bounded memory as the job reads
            pf = pq.ParquetFile(f)
            rows += sum(pf.read_row_group(i, columns=self.columns).num_rows for i in range(pf.num_row_groups))
        pq.write_table(self.predictions, os.path.join(self.out, "predictions.parquet"))
        return rows


def profile_run(argv: list[str], out: str, records: int, top: int = 15) -> dict:
    """One no-op run under cProfile: seconds of own time by package, and the `top` functions by own time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    seconds = run_job(argv, out, records)
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, own time, cumulative, callers)
    groups = {"beam_pipeline (the job)": "/beam_pipeline/", "schemas (validation)": "/schemas/",
              "apache_beam": "/apache_beam/", "pyarrow": "/pyarrow/", "numpy": "/numpy/"}
    by_group: dict[str, float] = {g: 0.0 for g in [*groups, "other (Python, builtins, threads)"]}
    for (file, _, _), (_, _, own, _, _) in stats.items():
        group = next((g for g, part in groups.items() if part in file), "other (Python, builtins, threads)")
        by_group[group] += own
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    note(f"cProfile of one no-op run ({records} records, {seconds:.2f} s under the profiler); own time by package: "
         + ", ".join(f"{g} {t:.2f} s" for g, t in by_group.items()))
    for (file, line, name), (calls, _, own, cum, _) in rows:
        where = file.split("site-packages/")[-1].replace(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/", "")
        note(f"  {own:6.3f} s own {cum:6.3f} s cumulative {calls:7d} calls  {where}:{line}({name})")
    return {"seconds": seconds, "own_seconds_by_package": by_group,
            "top": [{"function": f"{file}:{line}({name})", "calls": calls, "own_s": own, "cumulative_s": cum}
                    for (file, line, name), (calls, _, own, cum, _) in rows]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer records and rounds (under a minute)")
    p.add_argument("--records", type=int, default=500000,
                   help="small-preset records (default 500000: 560 MB, so that the start-up is not most of a run)")
    p.add_argument("--batch-size", type=int, default=256, help="--batch_size of the job (default 256)")
    p.add_argument("--tiny", type=int, default=4, help="records of the start-up run (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="data, checkpoints, outputs (default runs/bench/pipeline)")
    p.add_argument("--profile", action="store_true", help="also profile one no-op run (cProfile) and print where it goes")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    if a.quick:
        a.records, a.rounds = min(a.records, 5000), 2
    quiet_logs()
    describe_machine()
    results: dict = {}
    model = model_dir(a.work_dir, "small")
    data, tiny = data_dir(a.work_dir, "small", a.records), data_dir(a.work_dir, "small", a.tiny, seed=1)
    out = os.path.join(a.work_dir, "out-io")
    big_argv = job_argv(data, model, out, a.batch_size, 1)
    tiny_argv = job_argv(tiny, model, out + "-tiny", a.batch_size, 1)
    with no_op_model():
        run_job(tiny_argv, out + "-tiny", a.tiny)  # warm-up: imports, first Beam graph
        run_job(big_argv, out, a.records)  # once, for the prediction table the pyarrow side writes
        predictions = pa.concat_tables([pq.read_table(f) for f in prediction_files(out)])
        predictions = predictions.cast(prediction_schema()) if predictions.schema != prediction_schema() else predictions
        assert predictions.num_rows == a.records
        io = PyarrowIO(data, predictions, out + "-pyarrow")
        fns = {"io_job": lambda: run_job(big_argv, out, a.records), "pyarrow": io,
               "startup": lambda: run_job(tiny_argv, out + "-tiny", a.tiny)}
        load = os.getloadavg()[0]
        times = interleave(fns, rounds=a.rounds, warmup=1)
        profiled = profile_run(big_argv, out, a.records) if a.profile else None
    steady = [j - s for j, s in zip(times["io_job"], times["startup"])]
    r_all, q_all = ratio(times["pyarrow"], times["io_job"]), quartiles(ratios(times["pyarrow"], times["io_job"]))
    if min(s / j for s, j in zip(steady, times["io_job"])) < 0.1:  # start-up is nearly all of the run: no steady figure
        note("the start-up is over 90 % of a run in some round: no steady figure (use more --records)")
        steady = [float("nan")] * len(steady)
        r_steady, q_steady = float("nan"), (float("nan"), float("nan"))
    else:
        r_steady, q_steady = ratio(times["pyarrow"], steady), quartiles(ratios(times["pyarrow"], steady))
    in_bytes = sum(os.path.getsize(f) for f in io.files)
    out_bytes = sum(os.path.getsize(f) for f in prediction_files(out))
    note(f"small: {a.records} records ({in_bytes / 1e6:.1f} MB Parquet in, {out_bytes / 1e6:.1f} MB predictions out), "
         f"batch {a.batch_size}, {a.rounds} rounds, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; seconds "
         "(median) " + ", ".join(f"{k} {median(v):.3f}" for k, v in times.items()))
    note(f"per-round ratio quartiles: with start-up {q_all[0]:.3f}..{q_all[1]:.3f}, steady {q_steady[0]:.3f}..{q_steady[1]:.3f}")
    emit("records", a.records, results)
    emit("io_job_records_per_s", a.records / median(times["io_job"]), results)
    emit("io_job_steady_records_per_s", a.records / median(steady), results)
    emit("pyarrow_records_per_s", a.records / median(times["pyarrow"]), results)
    emit("startup_s", median(times["startup"]), results)
    emit("io_over_pyarrow_steady", r_steady, results)
    if a.json:
        write_json(a.json, {"environment": environment(), "args": vars(a), "seconds": times, "results":
                            {**results, "io_over_pyarrow": r_all}, "quartiles": {"with_startup": q_all, "steady": q_steady},
                            "bytes": {"input": in_bytes, "predictions": out_bytes}, "profile": profiled})
    emit("io_over_pyarrow", r_all, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
