"""Pipeline efficiency on CPU: records/s of the whole batch job over records/s of the model alone.

For each preset (random weights, synthetic records of which 30 % miss one modality, written with
emmr.synth.write), three things take turns in each round (benchmarks/common.py `interleave`):
  pipeline  beam_pipeline.run.run with --runner=DirectRunner on N records: Parquet in, predictions and dead
            letters out, everything included (options and model checks, Beam graph, model load, read,
            validate, pad, score, format, write, summary)
  model     the model-only loop: Scorer.score over the same N records, same batch size, same torch threads,
            in this process, on records already read with emmr.batch.load_records (load and read not timed)
  startup   the same job on a tiny input (--tiny records): the job's fixed start-up cost
Printed per preset: records/s of both, the start-up seconds, and two ratios (medians of per-round ratios):
  pipeline_over_model_<preset>           model seconds / pipeline seconds: start-up counted (subtract nothing)
  pipeline_over_model_steady_<preset>    model seconds / (pipeline seconds - start-up seconds)
The headline, printed last, is pipeline_over_model_paper (goal: at least 0.9, issue #14; #8 asked 0.8).

Both sides use --threads torch threads (default 1, as benchmarks/model_throughput.py: on shared cores more
threads wait for each other) and --batch-<preset> records per model call.

  .venv/bin/python benchmarks/pipeline_efficiency.py [--quick] [--json runs/bench/pipeline_efficiency.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from benchmarks.common import emit, environment, interleave, median, note, quartiles, ratio, ratios, write_json  # noqa: E402
from benchmarks.pipeline_common import (DEFAULT_WORK_DIR, ModelLoop, data_dir, describe_machine, job_argv,  # noqa: E402
                                        model_dir, quiet_logs, run_job)


def measure(tag: str, work_dir: str, records: int, tiny: int, batch_size: int, threads: int, rounds: int,
            results: dict) -> dict:
    model = model_dir(work_dir, tag)
    data, small = data_dir(work_dir, tag, records), data_dir(work_dir, tag, tiny, seed=1)
    out = os.path.join(work_dir, f"out-efficiency-{tag}")
    big_argv = job_argv(data, model, out, batch_size, threads)
    tiny_argv = job_argv(small, model, out + "-tiny", batch_size, threads)
    loop = ModelLoop(model, data, batch_size, threads)
    run_job(tiny_argv, out + "-tiny", tiny)  # warm-up: imports, first Beam graph
    loop()
    fns = {"pipeline": lambda: run_job(big_argv, out, records), "model": loop,
           "startup": lambda: run_job(tiny_argv, out + "-tiny", tiny)}
    load = os.getloadavg()[0]
    times = interleave(fns, rounds=rounds, warmup=0)
    steady = [p - s for p, s in zip(times["pipeline"], times["startup"])]
    r_all, q_all = ratio(times["model"], times["pipeline"]), quartiles(ratios(times["model"], times["pipeline"]))
    if min(s / p for s, p in zip(steady, times["pipeline"])) < 0.1:  # start-up is nearly all of the run
        note(f"{tag}: the start-up is over 90 % of a run in some round: no steady figure (use more records)")
        r_steady, q_steady = float("nan"), (float("nan"), float("nan"))
    else:
        r_steady, q_steady = ratio(times["model"], steady), quartiles(ratios(times["model"], steady))
    note(f"{tag}: {records} records, batch {batch_size}, {threads} torch thread(s), {rounds} rounds, load average "
         f"{load:.1f} -> {os.getloadavg()[0]:.1f}; seconds (median) "
         + ", ".join(f"{k} {median(v):.2f}" for k, v in times.items()))
    note(f"{tag}: per-round ratio quartiles: with start-up {q_all[0]:.3f}..{q_all[1]:.3f}, "
         f"steady {q_steady[0]:.3f}..{q_steady[1]:.3f}")
    emit(f"records_{tag}", records, results)
    emit(f"pipeline_records_per_s_{tag}", records / median(times["pipeline"]), results)
    emit(f"model_records_per_s_{tag}", records / median(times["model"]), results)
    emit(f"startup_s_{tag}", median(times["startup"]), results)
    emit(f"pipeline_over_model_steady_{tag}", r_steady, results)
    return {"records": records, "tiny": tiny, "batch_size": batch_size, "threads": threads, "rounds": rounds,
            "seconds": times, "pipeline_over_model": r_all, "pipeline_over_model_steady": r_steady,
            "quartiles": {"with_startup": q_all, "steady": q_steady}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer records and rounds (under a minute)")
    p.add_argument("--records-paper", type=int, default=256, help="paper-preset records (default 256)")
    p.add_argument("--records-small", type=int, default=20000, help="small-preset records (default 20000)")
    p.add_argument("--batch-paper", type=int, default=64, help="batch size, paper preset (default 64)")
    p.add_argument("--batch-small", type=int, default=256, help="batch size, small preset (default 256)")
    p.add_argument("--tiny", type=int, default=4, help="records of the start-up run (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="data, checkpoints, outputs (default runs/bench/pipeline)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    if a.quick:
        a.records_paper, a.records_small, a.rounds = min(a.records_paper, 64), min(a.records_small, 4000), 2
    quiet_logs()
    describe_machine()
    results: dict = {}
    figures = {"environment": environment(), "args": vars(a)}
    figures["small"] = measure("small", a.work_dir, a.records_small, a.tiny, a.batch_small, a.threads, a.rounds, results)
    figures["paper"] = measure("paper", a.work_dir, a.records_paper, a.tiny, a.batch_paper, a.threads, a.rounds, results)
    emit("pipeline_over_model_small", figures["small"]["pipeline_over_model"], results)
    emit("pipeline_over_model_paper", figures["paper"]["pipeline_over_model"], results)  # the headline, last
    figures["results"] = results
    if a.json:
        write_json(a.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
