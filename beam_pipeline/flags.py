"""The scoring job's own flags, as plain argparse (no Beam, no torch): `emmr-score --help` answers at once.

`beam_pipeline.options.ScoringOptions` adds them to Beam's PipelineOptions, so that one argv carries both; the
flex template's parameters are generated from the same definitions (deploy/make_template_metadata.py).
"""

from __future__ import annotations

import argparse
import re

TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]{3,255}$")
SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]{3,255}$")
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
AUTOCAST = ("none", "bfloat16", "float16")
DEFAULT_METRICS_PORT = 9464  # streaming workers; the first free port from here up is taken, one per process
# Batch: a run with more dead letters than this share of its records fails (exit status 1), and the alert
# EmmrBatchDeadLettersOverLimit (deploy/prometheus/alerts.yml) fires at the same share; above the warning share the
# summary warns.
DEFAULT_MAX_DEAD_LETTER_FRACTION = 0.5
DEAD_LETTER_WARNING_FRACTION = 0.01


def parse_bool(text: str | bool) -> bool:
    """A flag value: true/false (also 1/0, yes/no, any case). A flex template passes every flag as --name=value."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


parse_bool.__name__ = "boolean"  # argparse names the type in its error message: "invalid boolean value"


def add_scoring_arguments(parser) -> None:
    """The job's flags, in one argument group of `parser` (argparse or Beam's)."""
    g = parser.add_argument_group("EMMR scoring")
    g.add_argument("--input", help="batch: input record v1 Parquet, local or gs://: a folder (its *.parquet), a glob "
                                  "(quoted: 'data/*.parquet') or a file")
    g.add_argument("--input_subscription", help="streaming: projects/<p>/subscriptions/<s> of message v1")
    g.add_argument("--input_topic", help="streaming: projects/<p>/topics/<t> (Beam creates a subscription)")
    g.add_argument("--output", help="prediction v1 Parquet, local or gs://: a file prefix (out/predictions/part writes "
                                   "out/predictions/part-00000-of-00001.parquet, ...) or a folder (existing, or ending "
                                   "in /: its part-*.parquet); the summary lists the files written")
    g.add_argument("--output_topic", help="streaming: projects/<p>/topics/<t>; one JSON prediction v1 per message")
    g.add_argument("--dead_letter", help="required: dead letter v1 Parquet, a file prefix or a folder like --output; or "
                                        "(streaming) a topic projects/<p>/topics/<t>")
    g.add_argument("--model", help="required: checkpoint directory, local or gs://")
    g.add_argument("--run_date", default=None, metavar="YYYY-MM-DD",
                   help="batch: the day this run is for; replaces {date} in --input, --output, --dead_letter and "
                        "--summary_json (e.g. gs://b/inbox/dt={date}/*.parquet) (default: today, UTC)")
    g.add_argument("--run_id", default=None,
                   help="the id this run's output files carry (default: made at launch; a local run's is its "
                        "job id, local-...)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; cuda without a GPU is an error (default cpu)")
    g.add_argument("--autocast", default="none", choices=AUTOCAST, help="mixed precision on the device (default none)")
    g.add_argument("--torch_threads", type=int, default=None, help="torch CPU threads per worker process (default: torch's)")
    g.add_argument("--batch_size", type=int, default=256, help="maximum records per inference batch (default 256)")
    g.add_argument("--batch_duration_s", type=float, default=0.5,
                   help="streaming: longest wait to fill a batch, seconds, at most 10 (default 0.5)")
    g.add_argument("--window_s", type=float, default=60.0,
                   help="streaming: event-time windows of this many seconds (publication time); Parquet outputs get "
                        "--file_shards files per window (default 60)")
    g.add_argument("--file_shards", type=int, default=2,
                   help="streaming Parquet outputs: files per window and firing (default 2)")
    g.add_argument("--allowed_lateness_s", type=float, default=86400.0,
                   help="streaming: how long after its window a message is still scored into it (a later firing, "
                        "its own files); later ones are dropped by Beam (default 86400: one day)")
    g.add_argument("--share_model", nargs="?", const=True, default=False, type=parse_bool, metavar="true|false",
                   help="true: one model per machine shared by its worker processes (large models; see "
                        "--model_copies); --share_model alone means true (default false)")
    g.add_argument("--model_pattern", default=None,
                   help="streaming: follow the newest checkpoint whose checkpoint.json matches this glob (e.g. "
                        "gs://b/models/*/checkpoint.json) and swap to it between batches while running")
    g.add_argument("--model_poll_s", type=float, default=60.0,
                   help="with --model_pattern: seconds between looks for a new checkpoint (default 60)")
    g.add_argument("--model_copies", type=int, default=None,
                   help="number of shared model copies per machine (implies --share_model)")
    g.add_argument("--metrics_port", type=int, default=None,
                   help=f"serve Prometheus /metrics from each worker process on the first free port from here "
                        f"(default {DEFAULT_METRICS_PORT} when streaming, off in batch); 0 or -1: off")
    g.add_argument("--metrics_addr", default="0.0.0.0", help="bind address of /metrics (default 0.0.0.0)")
    g.add_argument("--pushgateway", default=None,
                   help="local batch runs: push the job summary to this Pushgateway (host:port or URL), grouping key "
                        "job=<job name>; remote jobs: `emmr-score report --job <id> --pushgateway ...`")
    g.add_argument("--max_dead_letter_fraction", type=float, default=None,
                   help=f"batch: a run whose dead letters are more than this share of its records fails (exit status "
                        f"1, with the reason; the outputs are still written) (default {DEFAULT_MAX_DEAD_LETTER_FRACTION}; "
                        f"the summary warns above {DEAD_LETTER_WARNING_FRACTION:g})")  # no percent sign: argparse formats help
    g.add_argument("--summary_json", default=None,
                   help="local batch runs: also write the job summary as JSON here (local or gs://); remote jobs: "
                        "`emmr-score report --job <id> --summary_json ...`")


EXAMPLES = """examples:
  emmr-score --runner=DirectRunner --input 'data/*.parquet' --model runs/ckpt \\
      --output out/predictions/part --dead_letter out/dead_letters/part [--pushgateway 127.0.0.1:9091]
  emmr-score --runner=DirectRunner --streaming --input_subscription projects/P/subscriptions/S \\
      --model gs://bucket/ckpt --output_topic projects/P/topics/predictions \\
      --dead_letter projects/P/topics/dead-letters --metrics_port 9464
  emmr-score --runner=DataflowRunner --project P --region R ...   # submits the job, logs its id, returns
  emmr-score report --job JOB_ID [--project P --region R] [--pushgateway HOST:9091]   # a job's summary
"""


def help_text() -> str:
    parser = argparse.ArgumentParser(
        prog="emmr-score", description="Score input v1 records with an EMMR checkpoint, as an Apache Beam job. Beam's "
        "own options (--runner, --job_name, --streaming, Dataflow's --project/--region/...) are accepted too; any "
        "other flag is an error. `emmr-score report --help`: the summary of a job, from its committed Beam metrics.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scoring_arguments(parser)
    return parser.format_help()


REPORT_EXAMPLES = """examples:
  emmr-score report --job 2026-07-20_03_00_12-1234567890 --project P --region R [--pushgateway HOST:9091]
  emmr-score report --job local-20260720T030012Z-1a2b3c          # a local run, recorded when it ended
  emmr-score report --job_json job.json --metrics_json metrics.json   # saved Dataflow API responses
exit status: 0 the job succeeded and its counts add up; 1 it failed, was cancelled, its counts do not add up, or
more of its records than its --max_dead_letter_fraction (default 0.5) are dead letters;
2 bad arguments or no such job; 3 the job has not finished (without --wait)
"""


def add_job_source_arguments(p: argparse.ArgumentParser, saved_note: str = "") -> None:
    """Which job to read (beam_pipeline/jobs.py): a Dataflow job, a local run's record, or saved API responses;
    shared by `emmr-score report` and `emmr-score export`."""
    p.add_argument("--job", help="job id: a Dataflow job id, or local-... (a local run, from the local job store)")
    p.add_argument("--project", help="Dataflow: the job's project")
    p.add_argument("--region", help="Dataflow: the job's region")
    p.add_argument("--job_json", help=f"instead of --job: a saved Job resource (REST JSON, e.g. jobs.get){saved_note}")
    p.add_argument("--metrics_json", help=f"with --job_json: the saved JobMetrics (REST JSON, jobs.getMetrics){saved_note}")
    p.add_argument("--jobs_dir", help="the local job store (default $EMMR_JOBS_DIR, else ~/.cache/emmr/jobs)")


def report_parser() -> argparse.ArgumentParser:
    """`emmr-score report` (beam_pipeline/report.py)."""
    p = argparse.ArgumentParser(
        prog="emmr-score report", description="Summarise a scoring job from its committed Beam metrics: records in = "
        "predictions + dead letters, dead letters by reason, predictions by label, key-missing flags; optionally "
        "push the summary to a Pushgateway. Reads a Dataflow job through the Dataflow API, a local run from the "
        "local job store, or saved API responses.", epilog=REPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_source_arguments(p)
    p.add_argument("--wait", action="store_true", help="Dataflow: poll until the job has finished")
    p.add_argument("--poll_s", type=float, default=30.0, help="with --wait: seconds between polls (default 30)")
    p.add_argument("--pushgateway", help="push the summary here (host:port or URL), grouping key job=<job name>")
    p.add_argument("--summary_json", help="also write the summary as JSON here (local or gs://)")
    return p


def report_help() -> str:
    return report_parser().format_help()
