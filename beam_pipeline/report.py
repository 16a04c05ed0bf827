"""The job summary, the conservation check and the Pushgateway push, from a job's committed Beam metrics.

    emmr-score report --job 2026-07-20_03_00_12-1234567890 --project P --region R [--pushgateway HOST:9091]
    emmr-score report --job local-20260720T030012Z-1a2b3c                   # a local run (recorded by run())
    emmr-score report --job_json job.json --metrics_json metrics.json       # saved Dataflow API responses
        [--summary_json PATH] [--wait]
(the flags: beam_pipeline/flags.py `report_parser`, so that `--help` loads nothing heavy)

One code path for every runner: the job's metrics become Beam MetricResults (a local PipelineResult's directly;
a Dataflow job's from the Dataflow API's JobMetrics, beam_pipeline/jobs.py), then `metrics.Snapshot` (committed
values: a retried bundle counts once), then a `JobSummary`. A local batch run does this itself when it ends (and
records itself, so that `report --job local-...` gives the same summary later); on Dataflow the launcher only
submits the job, and the schedule runs this command after the job (deploy/scheduler/).

`publish` logs the summary, checks conservation (records in = predictions + dead letters), writes
--summary_json and, for a job that succeeded, pushes the summary to --pushgateway (grouping key job=<job name>;
a failed job pushes nothing, so that the last success time stays the previous run's).

Exit status of the command: 0 the job succeeded and its counts add up; 1 it failed, was cancelled, its counts do
not add up, or more of its records than --max_dead_letter_fraction (default 0.5) are dead letters; 2 bad arguments or no such job; 3 the job has not finished (without --wait).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field

from beam_pipeline import jobs, metrics, paths
from beam_pipeline.flags import DEAD_LETTER_WARNING_FRACTION, DEFAULT_MAX_DEAD_LETTER_FRACTION
from beam_pipeline.jobs import JobInfo
from beam_pipeline.options import DEFAULT_JOB_NAME

log = logging.getLogger("beam_pipeline")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING = 0, 1, 2, 3


@dataclass(frozen=True)
class ModelFacts:
    """What the summary needs to know of the model: its version and the label and modality names (so that a label
    or modality never counted still shows, at 0)."""

    version: str | None
    label_names: tuple[str, ...] = ()
    modality_names: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: str | None) -> "ModelFacts":
        """From the checkpoint's checkpoint.json (local or gs://); unknown when it cannot be read."""
        if not path:
            return cls(None)
        from emmr import checkpoint
        from emmr.config import ModelConfig

        try:
            meta = checkpoint.read_meta(path)
            config = ModelConfig.from_dict(meta["model"])
        except Exception as e:  # noqa: BLE001 - the counts are still reported, without the model's names
            log.warning("cannot read the model %s for the summary (%s); labels and modalities never counted are "
                        "left out", metrics.redact(path), e)
            return cls(None)
        return cls(meta.get("model_version"), tuple(config.label_names), tuple(config.modality_names))

    def known_series(self) -> dict[str, list[dict[str, str]]]:
        return metrics.known_series(self.modality_names, self.label_names)


def max_dead_letter_fraction(options: dict) -> float:
    """The job's --max_dead_letter_fraction (recorded with its options), else the default."""
    value = options.get("max_dead_letter_fraction")
    try:
        return DEFAULT_MAX_DEAD_LETTER_FRACTION if value in (None, "") else float(value)
    except (TypeError, ValueError):
        log.warning("the job's --max_dead_letter_fraction %r is not a number: using %s", value,
                    DEFAULT_MAX_DEAD_LETTER_FRACTION)
        return DEFAULT_MAX_DEAD_LETTER_FRACTION


PARQUET_OUTPUTS = ("predictions", "dead_letters")


def outputs_of(options: dict) -> dict[str, str]:
    """Where each output of the job went, from its pipeline options (dead letters to a topic are named as one):
    batch Parquet outputs as the run's file prefix (its day in place of {date}, then `-<run id>`: the files the
    run wrote, not an earlier run's)."""
    from beam_pipeline.options import expand_date

    dead = options.get("dead_letter")
    dead_is_topic = bool(dead) and str(dead).startswith("projects/")
    run_date, run_id = str(options.get("run_date") or ""), options.get("run_id")
    batch = not options.get("streaming")

    def files(prefix):
        if not prefix:
            return None
        prefix = paths.output_prefix(expand_date(str(prefix), run_date) if run_date else str(prefix))
        return f"{prefix}-{run_id}" if run_id and batch else prefix

    out = {"predictions": files(options.get("output")), "prediction_topic": options.get("output_topic"),
           "dead_letters": None if dead_is_topic else files(dead), "dead_letter_topic": dead if dead_is_topic else None}
    return {k: str(v) for k, v in out.items() if v}


@dataclass
class JobSummary:
    """What a job did, from its committed Beam metrics."""

    state: str
    records_in: int
    predictions: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    predictions_by_label: dict[str, int] = field(default_factory=dict)
    key_missing_by_modality: dict[str, int] = field(default_factory=dict)
    missing_by_modality: dict[str, int] = field(default_factory=dict)
    ensemble_used: int = 0
    model_version: str | None = None
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    job_id: str = ""
    job_name: str = ""
    attempted_only: list[str] = field(default_factory=list)  # metrics the runner did not commit (see Snapshot)
    max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION
    files: dict[str, list[str] | str] = field(default_factory=dict)  # Parquet output -> files written, or why not listed

    @property
    def conserved(self) -> bool:
        return self.records_in == self.predictions + self.dead_letters

    @property
    def dead_letter_fraction(self) -> float:
        out = self.predictions + self.dead_letters
        return self.dead_letters / out if out else 0.0

    @property
    def too_many_dead_letters(self) -> bool:
        return self.dead_letter_fraction > self.max_dead_letter_fraction

    def dead_letter_problem(self) -> str | None:
        """One line: why the run fails (over --max_dead_letter_fraction) or what to look at (over 1 %); else None."""
        share = self.dead_letter_fraction
        if share <= DEAD_LETTER_WARNING_FRACTION:
            return None
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters_by_reason.items(), key=lambda kv: -kv[1])[:3])
        what = f"{self.dead_letters} of {self.predictions + self.dead_letters} records ({share:.1%}) are dead letters"
        if self.too_many_dead_letters:
            return (f"{what}, more than --max_dead_letter_fraction {self.max_dead_letter_fraction:g}: the run fails "
                    f"(most common: {top}); does the input fit the model (its preset, columns and types)?")
        return f"{what}, above {DEAD_LETTER_WARNING_FRACTION:.0%} (most common: {top}): see the dead letters' error column"

    @property
    def succeeded(self) -> bool:
        return self.state.endswith("DONE")

    @classmethod
    def from_snapshot(cls, s: metrics.Snapshot, job: JobInfo, model: ModelFacts) -> "JobSummary":
        versions = [metrics.parse_series(k)[1].get("version") for k, v in s.gauges.items()
                    if metrics.parse_series(k)[0] == metrics.MODEL_INFO.name and v]  # 0: a model swapped out
        return cls(
            state=job.state,
            records_in=s.total(metrics.INPUT_RECORDS),
            predictions=s.total(metrics.RECORDS, outcome=metrics.PREDICTED),
            dead_letters=s.total(metrics.RECORDS, outcome=metrics.DEAD_LETTER),
            dead_letters_by_reason=dict(sorted(s.by_label(metrics.DEAD_LETTERS, "reason").items())),
            predictions_by_label=s.by_label(metrics.PREDICTIONS, "label", model.label_names),
            key_missing_by_modality=s.by_label(metrics.KEY_MISSING, "modality", model.modality_names),
            missing_by_modality=s.by_label(metrics.MISSING, "modality", model.modality_names),
            ensemble_used=s.total(metrics.ENSEMBLE_USED),
            model_version=versions[0] if versions else model.version,
            seconds=round(job.seconds, 3),
            outputs=outputs_of(job.options),
            job_id=job.id,
            job_name=job.name,
            attempted_only=list(s.attempted_only),
            max_dead_letter_fraction=max_dead_letter_fraction(job.options),
        )

    def to_json(self) -> dict:
        return {**asdict(self), "conserved": self.conserved, "dead_letter_fraction": self.dead_letter_fraction,
                "too_many_dead_letters": self.too_many_dead_letters}

    def _where(self, output: str, value: str) -> str:
        """An output as the summary shows it: the files written (a few, and the pattern of them all), or the topic."""
        if output not in PARQUET_OUTPUTS:
            return value
        files = self.files.get(output)
        pattern = paths.files_pattern(paths.output_prefix(value))
        if files is None:
            return pattern
        if isinstance(files, str):
            return f"{pattern} (not listed: {files})"
        if not files:
            return f"no file found at {pattern}"
        shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        return f"{len(files)} file{'s' if len(files) > 1 else ''}: {shown}" + (f" ({pattern})" if len(files) > 3 else "")

    def text(self) -> str:
        def fmt(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

        lines = [
            f"job             {self.job_name} ({self.job_id})",
            f"records in      {self.records_in}  (= {self.predictions} predictions + {self.dead_letters} dead letters: "
            f"{'conserved' if self.conserved else 'NOT CONSERVED'})",
            f"scored          {self.predictions}  (by label: {fmt(self.predictions_by_label)}; ensemble decided "
            f"{self.ensemble_used})",
            f"dead letters    {self.dead_letters}  (by reason: {fmt(self.dead_letters_by_reason)})",
            f"missing         {fmt(self.missing_by_modality)}  (scored records missing each modality)",
            f"key missing     {fmt(self.key_missing_by_modality)}  (flagged: the missing modality flips the label)",
            f"model           {self.model_version}",
            f"run time        {self.seconds:.1f} s ({self.state})",
        ]
        lines += [f"{k + ':':15} {self._where(k, v)}" for k, v in self.outputs.items()]
        if self.attempted_only:
            lines.append(f"not committed   {', '.join(self.attempted_only)} (attempted counts: retries count again)")
        problem = self.dead_letter_problem()
        if problem:
            lines.append(f"{'FAILED:' if self.too_many_dead_letters else 'WARNING:':15} {problem}")
        return "\n".join(lines)


def summarize(results, job: JobInfo, model: ModelFacts | None = None,
              list_files: bool = True) -> tuple[JobSummary, metrics.Snapshot]:
    """Beam MetricResults of a job (a PipelineResult's, or parsed from JobMetrics) -> its summary; with `list_files`,
    the Parquet files the job wrote (under each output prefix, those since the job was created)."""
    model = model or ModelFacts.read(job.options.get("model"))
    snapshot = metrics.Snapshot.from_results(results)
    summary = JobSummary.from_snapshot(snapshot, job, model)
    for output, value in summary.outputs.items():
        if list_files and output in PARQUET_OUTPUTS:
            try:
                summary.files[output] = paths.written_files(paths.output_prefix(value), job.created)
            except Exception as e:  # noqa: BLE001 - the summary names the pattern and why it is not listed
                summary.files[output] = metrics.redact(" ".join(f"{type(e).__name__}: {e}".split()))[:200]
    return summary, snapshot


def publish(summary: JobSummary, snapshot: metrics.Snapshot, model: ModelFacts, *, pushgateway: str | None = None,
            summary_json: str | None = None, device: str | None = None) -> None:
    """Log the summary and the conservation check, write it as JSON, push it to the Pushgateway."""
    log.info("job %s (%s) %s after %.1f s: records in %d = %d predictions + %d dead letters", summary.job_name,
             summary.job_id, summary.state, summary.seconds, summary.records_in, summary.predictions,
             summary.dead_letters)
    if not summary.conserved:
        log.error("records in (%d) != predictions (%d) + dead letters (%d)", summary.records_in, summary.predictions,
                  summary.dead_letters)
    if summary.attempted_only:
        log.warning("the runner did not commit %s: attempted counts are reported", ", ".join(summary.attempted_only))
    problem = summary.dead_letter_problem()
    if problem:
        (log.error if summary.too_many_dead_letters else log.warning)("%s", problem)
    if summary_json:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(summary_json) as f:
            f.write(json.dumps(summary.to_json(), indent=2).encode())
    if pushgateway and not summary.succeeded:
        # The push replaces the job's group: a failed run's would erase the last success time, which the alerts
        # need (EmmrBatchRunOverdue fires when no run has succeeded for 26 h).
        log.error("job %s %s: nothing pushed to the Pushgateway", summary.job_id, summary.state)
    elif pushgateway:
        if summary.model_version and not any(metrics.parse_series(k)[0] == metrics.MODEL_INFO.name
                                             for k in snapshot.gauges):
            # Dataflow reports no gauges: the model served is the job's checkpoint, on the device it asked for (a
            # worker fails rather than fall back).
            labels = {"version": summary.model_version, "device": device or "", "requested_device": device or ""}
            snapshot.gauges[metrics.series_name(metrics.MODEL_INFO.name, labels)] = 1
        registry = metrics.summary_registry(snapshot, summary.seconds, model.known_series())
        try:
            metrics.push_summary(pushgateway, summary.job_name or DEFAULT_JOB_NAME, registry)
        except OSError as e:
            log.error("could not push the job summary to the Pushgateway %s: %s", metrics.redact(pushgateway),
                      metrics.redact(str(e)))


def exit_status(summary: JobSummary, finished: bool = True) -> int:
    if not finished:
        return EXIT_RUNNING
    return EXIT_OK if summary.succeeded and summary.conserved and not summary.too_many_dead_letters else EXIT_FAILED


# ------------------------------------------------------------------------------------------- the command


def parser():
    from beam_pipeline.flags import report_parser

    return report_parser()


def load(args) -> tuple[dict, dict]:
    """The Job and JobMetrics documents the arguments point at; raises JobNotFound or ValueError."""
    if args.job_json or args.metrics_json:
        if not (args.job_json and args.metrics_json) or args.job:
            raise ValueError("give --job_json and --metrics_json together, without --job")
        return jobs.read_documents(args.job_json, args.metrics_json)
    if not args.job:
        raise ValueError("give --job (a Dataflow job id or local-...), or --job_json with --metrics_json")
    if args.job.startswith(jobs.LOCAL_PREFIX):
        return jobs.read_local(args.job, args.jobs_dir)
    if not (args.project and args.region):
        raise ValueError(f"--job {args.job!r} is a Dataflow job id: give --project and --region")
    while True:
        job_doc, metrics_doc = jobs.fetch_dataflow(args.job, args.project, args.region)
        if not args.wait or jobs.parse_job(job_doc).terminal:
            return job_doc, metrics_doc
        log.info("job %s is %s; polling again in %.0f s", args.job, jobs.parse_job(job_doc).state, args.poll_s)
        time.sleep(args.poll_s)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        job_doc, metrics_doc = load(args)
    except (ValueError, jobs.JobNotFound) as e:
        log.error("%s", e)
        return EXIT_USAGE
    job = jobs.parse_job(job_doc)
    model = ModelFacts.read(job.options.get("model"))
    # Saved API responses (--job_json) are read offline: their outputs are named, not listed.
    summary, snapshot = summarize(jobs.parse_metrics(metrics_doc, metrics.NAMESPACE), job, model,
                                  list_files=not args.job_json)
    print(summary.text())
    if not job.terminal:
        log.warning("job %s is %s: these are the counts so far; nothing is pushed (run again when it has finished, "
                    "or with --wait)", job.id, job.state)
        return EXIT_RUNNING
    publish(summary, snapshot, model, pushgateway=args.pushgateway, summary_json=args.summary_json,
            device=job.options.get("device"))
    return exit_status(summary)
