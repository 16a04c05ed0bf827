"""The job's typed options, and the checks that reject bad combinations when the job is built.

`ScoringOptions` adds the job's flags to Beam's PipelineOptions (so one argv carries both). `check_options`
validates the combination and returns a `JobConfig`: the resolved mode (batch or streaming) and the kind of
every output, so that `build_pipeline` never re-parses flags. Anything wrong raises `OptionsError` listing
every problem at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from beam_pipeline.flags import (  # noqa: F401 - re-exported: the patterns and defaults belong to the options
    AUTOCAST,
    DEFAULT_METRICS_PORT,
    DEVICE,
    SUBSCRIPTION,
    TOPIC,
    add_scoring_arguments,
    parse_bool,
)

DEFAULT_JOB_NAME = "emmr-score"
DATE = "{date}"  # replaced by --run_date in batch paths
RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _valid_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d")
        return True
    except ValueError:
        return False


def expand_date(path: str | None, run_date: str) -> str | None:
    """{date} in a path -> the run's day (YYYY-MM-DD), e.g. gs://b/predictions/dt={date}/part."""
    return path.replace(DATE, run_date) if path else path
BATCH, STREAMING = "batch", "streaming"


class ScoringOptions(PipelineOptions):
    """The scoring job's flags (beam_pipeline/flags.py). Beam's own (--runner, --job_name, --streaming, ...) parse
    alongside."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_scoring_arguments(parser)


def metrics_port(flag: int | None, streaming: bool) -> int:
    """The first /metrics port a worker process tries: --metrics_port, else the default when streaming; 0 = off."""
    port = flag if flag is not None else (DEFAULT_METRICS_PORT if streaming else 0)
    return max(port, 0)


class OptionsError(ValueError):
    """The options do not describe a job that can run; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid options:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class JobConfig:
    """The checked options, resolved: what `build_pipeline` builds and `run` reports."""

    mode: str  # BATCH or STREAMING
    input: str | None
    input_subscription: str | None
    input_topic: str | None
    output: str | None
    output_topic: str | None
    dead_letter: str
    dead_letter_is_topic: bool
    model: str
    device: str
    autocast: str | None
    torch_threads: int | None
    batch_size: int
    batch_duration_s: float
    window_s: float
    share_model: bool
    model_copies: int | None
    metrics_port: int  # 0: off
    metrics_addr: str
    pushgateway: str | None
    job_name: str
    summary_json: str | None = None
    in_process: bool = False  # the runner runs the job in this process (DirectRunner): it is its own worker
    file_shards: int = 2
    allowed_lateness_s: float = 86400.0
    model_pattern: str | None = None
    model_poll_s: float = 60.0
    run_date: str = ""  # YYYY-MM-DD: {date} in the paths above is already replaced by it
    job_id: str | None = None  # the run's id (--run_id, else made by run()): its output files carry it

    @property
    def streaming(self) -> bool:
        return self.mode == STREAMING

    @property
    def acks_after_output(self) -> bool:
        """Pub/Sub messages are acknowledged by the job once written (beam_pipeline/acks.py): on in-process runners,
        whose own Pub/Sub read acknowledges on pull, for a subscription (a topic's subscription is temporary)."""
        return self.streaming and self.in_process and bool(self.input_subscription)

    def outputs(self) -> dict[str, str]:
        """Where each output goes, for the summary."""
        out = {"predictions": self.output, "prediction_topic": self.output_topic, "dead_letters": self.dead_letter}
        return {k: v for k, v in out.items() if v}

    def file_prefix(self, prefix: str) -> str:
        """A batch output prefix as this run writes it: `<prefix>-<run id>` (so that runs never replace each
        other's files); streaming files carry the run id in their names (beam_pipeline/writes.py)."""
        return f"{prefix}-{self.job_id}" if self.job_id and not self.streaming else prefix


def check_options(options: PipelineOptions) -> JobConfig:
    """Validate the combination of flags; returns the resolved JobConfig or raises OptionsError.

    A Pub/Sub input turns on Beam's --streaming (a Pub/Sub read is unbounded); everything else that does not fit
    together is an error, never silently adjusted.
    """
    problems: list[str] = unknown_flags(options)
    o = options.view_as(ScoringOptions)
    run_date = o.run_date or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    if not RUN_DATE.match(run_date) or not _valid_date(run_date):
        problems.append(f"--run_date {o.run_date!r}: expected a day as YYYY-MM-DD")
    dated = [f for f in ("input", "output", "dead_letter", "summary_json") if DATE in (getattr(o, f) or "")]
    std = options.view_as(StandardOptions)
    sources = [name for name in ("input", "input_subscription", "input_topic") if getattr(o, name)]
    if len(sources) != 1:
        problems.append(f"give exactly one of --input, --input_subscription, --input_topic (got {sources or 'none'})")
    pubsub_in = bool(o.input_subscription or o.input_topic)
    if o.input and std.streaming:
        problems.append("--input (Parquet) is a bounded source: drop --streaming, or read Pub/Sub")
    if pubsub_in:
        std.streaming = True
    streaming = bool(std.streaming)
    if o.input_subscription and not SUBSCRIPTION.match(o.input_subscription):
        problems.append(f"--input_subscription {o.input_subscription!r}: expected projects/<project>/subscriptions/<id>")
    if o.input_topic and not TOPIC.match(o.input_topic):
        problems.append(f"--input_topic {o.input_topic!r}: expected projects/<project>/topics/<id> (id of 3+ characters)")

    if not (o.output or o.output_topic):
        problems.append("give --output (Parquet prefix) and/or --output_topic")
    if o.output and o.output.startswith("projects/"):
        problems.append(f"--output {o.output!r} looks like a Pub/Sub path: use --output_topic")
    if o.output_topic:
        if not TOPIC.match(o.output_topic):
            problems.append(f"--output_topic {o.output_topic!r}: expected projects/<project>/topics/<id>")
        if not streaming:
            problems.append("--output_topic needs a streaming job (a Pub/Sub input); batch jobs write --output")

    dead_letter_is_topic = bool(o.dead_letter and o.dead_letter.startswith("projects/"))
    if not o.dead_letter:
        problems.append("--dead_letter is required (a Parquet prefix, or a topic when streaming): it is always on")
    elif dead_letter_is_topic:
        if not TOPIC.match(o.dead_letter):
            problems.append(f"--dead_letter {o.dead_letter!r}: expected projects/<project>/topics/<id> or a path prefix")
        elif not streaming:
            problems.append("--dead_letter as a topic needs a streaming job; batch jobs write a Parquet prefix")

    if not o.model:
        problems.append("--model (checkpoint directory, local or gs://) is required")
    if not DEVICE.match(o.device or ""):
        problems.append(f"--device {o.device!r}: expected cpu, cuda or cuda:N")
    if o.batch_size is None or o.batch_size < 1:
        problems.append(f"--batch_size must be at least 1, got {o.batch_size}")
    if not (o.batch_duration_s is not None and 0 < o.batch_duration_s <= 10):
        problems.append(f"--batch_duration_s must be in (0, 10] seconds, got {o.batch_duration_s}")
    if not (o.window_s is not None and o.window_s > 0):
        problems.append(f"--window_s must be positive, got {o.window_s}")
    if o.file_shards is None or o.file_shards < 1:
        problems.append(f"--file_shards must be at least 1, got {o.file_shards}")
    if o.allowed_lateness_s is None or o.allowed_lateness_s < 0:
        problems.append(f"--allowed_lateness_s must be 0 or more, got {o.allowed_lateness_s}")
    if o.torch_threads is not None and o.torch_threads < 1:
        problems.append(f"--torch_threads must be at least 1, got {o.torch_threads}")
    if o.model_copies is not None and o.model_copies < 1:
        problems.append(f"--model_copies must be at least 1, got {o.model_copies}")
    port = o.metrics_port if o.metrics_port is not None else (DEFAULT_METRICS_PORT if streaming else 0)
    if not -1 <= port <= 65535:
        problems.append(f"--metrics_port must be a port number, or 0 / -1 for off, got {port}")
    if o.summary_json and streaming:
        problems.append("--summary_json is for batch jobs (a streaming job never ends)")
    if dated and streaming:
        problems.append(f"{DATE} in {', '.join('--' + f for f in dated)} is for batch runs (a streaming job's files "
                        "are named by their windows)")
    if o.max_dead_letter_fraction is not None:
        if streaming:
            problems.append("--max_dead_letter_fraction is for batch jobs (a streaming job never ends): the alert "
                            "EmmrDeadLetterRateHigh watches a streaming job's dead letters")
        elif not 0 <= o.max_dead_letter_fraction <= 1:
            problems.append(f"--max_dead_letter_fraction must be in [0, 1], got {o.max_dead_letter_fraction}")
    if o.pushgateway and streaming:
        problems.append("--pushgateway is for batch jobs (a streaming job never ends): scrape the workers' "
                        "/metrics (--metrics_port) instead")
    in_process = runs_in_process(options)
    if o.model_pattern and not streaming:
        problems.append("--model_pattern is for streaming jobs (a batch run scores with one model: --model)")
    if o.model_pattern and not o.model_pattern.endswith("checkpoint.json"):
        problems.append(f"--model_pattern {o.model_pattern!r}: expected a glob of checkpoint.json files, e.g. "
                        "gs://bucket/models/*/checkpoint.json")
    if o.model_poll_s is None or o.model_poll_s <= 0:
        problems.append(f"--model_poll_s must be positive, got {o.model_poll_s}")
    for flag in ("summary_json", "pushgateway"):
        if getattr(o, flag) and not in_process:
            problems.append(f"--{flag} is for runs in this process: on a remote runner the launcher returns once the "
                            f"job is submitted; run `emmr-score report --job <id> --{flag} ...` after the job")
    if problems:
        raise OptionsError(problems)
    return JobConfig(
        mode=STREAMING if streaming else BATCH,
        input=expand_date(o.input, run_date),
        input_subscription=o.input_subscription,
        input_topic=o.input_topic,
        output=expand_date(o.output, run_date),
        output_topic=o.output_topic,
        dead_letter=expand_date(o.dead_letter, run_date),
        dead_letter_is_topic=dead_letter_is_topic,
        model=o.model,
        device=o.device,
        autocast=None if o.autocast == "none" else o.autocast,
        torch_threads=o.torch_threads,
        batch_size=o.batch_size,
        batch_duration_s=o.batch_duration_s,
        window_s=o.window_s,
        share_model=bool(o.share_model or o.model_copies),
        model_copies=o.model_copies,
        metrics_port=metrics_port(o.metrics_port, streaming),
        metrics_addr=o.metrics_addr,
        pushgateway=o.pushgateway,
        job_name=options.view_as(GoogleCloudOptions).job_name or DEFAULT_JOB_NAME,
        summary_json=expand_date(o.summary_json, run_date),
        in_process=in_process,
        file_shards=o.file_shards,
        allowed_lateness_s=o.allowed_lateness_s,
        model_pattern=o.model_pattern,
        model_poll_s=o.model_poll_s,
        run_date=run_date,
        job_id=o.run_id,
    )


def unknown_flags(options: PipelineOptions) -> list[str]:
    """A problem for every argument that neither the job nor Beam knows (Beam itself only warns and drops it, so a
    misspelled --batchsize would run with the default), each with the closest known flag. A value of the wrong
    type raises OptionsError at once (argparse would print Beam's whole usage, 140 lines, and exit)."""
    import argparse

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    from emmr.cli import unknown_argument_problems

    parser = _BeamArgumentParser(allow_abbrev=False, exit_on_error=False)
    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():  # what Beam parses: every options class imported so far
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)
    try:
        _, unknown = parser.parse_known_args(list(getattr(options, "_flags", None) or []))
    except argparse.ArgumentError as e:  # "argument --batch_size: invalid int value: 'ten'"
        raise OptionsError([str(e)]) from None
    return unknown_argument_problems(unknown, [s for a in parser._actions for s in a.option_strings])


# Runners that execute the job in the launching process (which is then the worker).
LOCAL_RUNNERS = {None, "", "directrunner", "direct", "switchingdirectrunner", "bundlebaseddirectrunner",
                 "fnapirunner", "interactiverunner"}


def runs_in_process(options: PipelineOptions) -> bool:
    """Whether the runner executes the job from this process (the DirectRunner and its kin, or the PortableRunner
    with its job server embedded here, --job_endpoint=embed): this process then waits for the job and summarises
    it; with the DirectRunner it is also the worker, which loads the model and serves /metrics."""
    from apache_beam.options.pipeline_options import PortableOptions

    runner = options.view_as(StandardOptions).runner
    runner_name = (runner if isinstance(runner, str) or runner is None else type(runner).__name__)
    if (runner_name or "").lower() == "portablerunner":
        return options.view_as(PortableOptions).job_endpoint == "embed"
    return (runner_name or "").lower() in LOCAL_RUNNERS
