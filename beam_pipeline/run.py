"""Entry point of the scoring job: `python -m beam_pipeline.run` or `emmr-score`.

    emmr-score --runner=DirectRunner --input 'data/*.parquet' --model runs/ckpt \\
        --output out/predictions/part --dead_letter out/dead_letters/part [--pushgateway 127.0.0.1:9091]
    emmr-score --runner=DirectRunner --streaming --input_subscription projects/P/subscriptions/S \\
        --model gs://bucket/ckpt --output_topic projects/P/topics/predictions \\
        --dead_letter projects/P/topics/dead-letters --metrics_port 9464
    emmr-score --runner=DataflowRunner --project P --region R ...   # submits the job and returns its id
    emmr-score report --job JOB_ID [--project P --region R] [--pushgateway HOST:9091]   # after a job: summary

`run(argv, test_pipeline)` checks the options and the model and builds the job on a new pipeline (or on the one
given), then:
- on a remote runner (Dataflow), submits it and returns: a launcher (a flex template's) never waits for a job.
  The summary comes from `emmr-score report --job <id>` (beam_pipeline/report.py), which the schedule runs after
  the job;
- on an in-process runner (DirectRunner), batch: waits for it, then summarises it from its committed Beam metrics
  with the same code as `report` (records in = predictions + dead letters, dead letters by reason, key-missing
  flags by modality), checks that the counts add up, writes --summary_json, pushes --pushgateway, and records the
  run in the local job store (`emmr-score report --job local-...` reads it again); streaming: returns the running
  PipelineResult.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

from beam_pipeline.flags import help_text, report_help

if TYPE_CHECKING:  # Beam and torch load when a job is built, not for `emmr-score --help`
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import JobConfig
    from beam_pipeline.pipeline import ModelSpec
    from beam_pipeline.report import JobSummary

log = logging.getLogger("beam_pipeline")


def _options_record(options: PipelineOptions) -> dict:
    """The job's pipeline options by name, as a Dataflow Job resource lists them (sdkPipelineOptions)."""
    return {k: v for k, v in options.get_all_options(retain_unknown_options=True).items()
            if v is not None and isinstance(v, (str, int, float, bool, list))}


def summarize_local(result, state: str, options: PipelineOptions, config: JobConfig, model: ModelSpec,
                    started: float) -> JobSummary:
    """A finished in-process batch run: its summary (report's code), published, and the run recorded locally."""
    from apache_beam.metrics.metric import MetricsFilter

    from beam_pipeline import jobs, metrics, report

    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    results = [r for kind in ("counters", "distributions", "gauges") for r in query.get(kind, [])]
    job = jobs.JobInfo(id=config.job_id or jobs.new_local_id(started), name=config.job_name, state=str(state).split(".")[-1],
                       created=started, state_time=time.time(), options=_options_record(options), kind=config.mode)
    facts = report.ModelFacts(model.version, tuple(model.config.label_names), tuple(model.config.modality_names))
    summary, snapshot = report.summarize(results, job, facts)
    try:
        folder = jobs.record_local(job, results)
        log.info("recorded the run as %s (%s): `emmr-score report --job %s` reports it again", job.id, folder, job.id)
    except OSError as e:
        log.warning("could not record the run in the local job store %s: %s", jobs.jobs_dir(), e)
    report.publish(summary, snapshot, facts, pushgateway=config.pushgateway, summary_json=config.summary_json,
                   device=config.device)
    return summary


RECORD_EVERY_S = 5.0  # a local streaming run writes its metrics to the local job store this often


def record_while_running(result, options, config, started: float) -> None:
    """A local streaming run: every RECORD_EVERY_S, its counts to the local job store under its job id, as a running
    job, in the JobMetrics format; `emmr-score export --job local-...` serves them to Prometheus as it would a
    Dataflow job's. The counts are this process's own, marked attempted (metrics.process_results: the streaming
    DirectRunner's Beam metrics miss the stages after the batching; it retries no bundle, so each is once)."""
    import threading

    from beam_pipeline import jobs

    def loop():
        while True:
            time.sleep(RECORD_EVERY_S)
            try:
                results = metrics.process_results()
                jobs.record_local(jobs.JobInfo(id=config.job_id, name=config.job_name, state="RUNNING",
                                               created=started, state_time=time.time(),
                                               options=_options_record(options), kind=config.mode), results)
            except Exception as e:  # noqa: BLE001 - scoring goes on; the exporter's staleness alert tells
                log.warning("could not record the run's metrics in the local job store: %s", e)

    from beam_pipeline import metrics

    log.info("recording the run's metrics as %s every %.0f s: `emmr-score export --job %s` serves them", config.job_id,
             RECORD_EVERY_S, config.job_id)
    threading.Thread(target=loop, name="emmr-record-metrics", daemon=True).start()


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None, save_main_session: bool = False):
    """Build and run the job. In-process batch: returns the JobSummary once it finished. In-process streaming:
    returns the running PipelineResult (cancel it to stop). Remote runners: returns the PipelineResult as soon as
    the job is submitted (its id: result.job_id()). Raises OptionsError for options or a model that cannot make a
    job.

    With `test_pipeline` (a TestPipeline), the job is built on it and run with its options; `argv` still
    describes the job."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import acks, metrics
    from beam_pipeline.pipeline import build_pipeline, prepare

    options = PipelineOptions(argv)
    if save_main_session:
        from apache_beam.options.pipeline_options import SetupOptions

        options.view_as(SetupOptions).save_main_session = True
    config, model = prepare(options)
    if not config.job_id:  # the run's id: its output files carry it (and a local run's record in the job store)
        from dataclasses import replace

        from beam_pipeline.jobs import new_local_id, new_run_id

        config = replace(config, job_id=new_local_id() if config.in_process else new_run_id(config.job_name))
    from beam_pipeline.options import ScoringOptions

    scoring = options.view_as(ScoringOptions)
    scoring.run_id, scoring.run_date = config.job_id, config.run_date  # recorded with the job's options
    log.info("%s job %s: model %s (version %s) on %s; outputs %s", config.mode, config.job_name,
             metrics.redact(config.model), model.version, config.device,
             {k: metrics.redact(v) for k, v in config.outputs().items()})
    started = time.time()
    p = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    build_pipeline(p, config, model)
    if config.streaming and config.in_process:
        # This process is the worker: serve /metrics now, not when the first message reaches a DoFn (a quiet job
        # is still scraped). Remote workers do the same at start-up (beam_pipeline/worker.py).
        if metrics.serve(config.metrics_port, config.metrics_addr):
            metrics.Recorder().declare(metrics.known_series(model.config.modality_names, model.config.label_names))
    if config.acks_after_output:  # the DirectRunner acknowledges on pull: acknowledge after output instead
        from beam_pipeline import direct_pubsub

        acks.hold(config.input_subscription, max_in_flight=acks.max_in_flight(config))
        direct_pubsub.install()
    if config.streaming or not config.in_process:
        result = p.run()
        if config.in_process:  # its metrics in the local job store, for `emmr-score export`
            record_while_running(result, options, config, started)
        else:
            job_id = getattr(result, "job_id", lambda: None)() if result is not None else None
            log.info("submitted %s job %s (id %s); when it has finished: emmr-score report --job %s", config.mode,
                     config.job_name, job_id, job_id)
        return result
    from beam_pipeline.progress import JobProgress, input_records

    with JobProgress(input_records(config.input)):  # records out of records in, records/s, while the job runs here
        result = p.run()
        state = result.wait_until_finish()
    return summarize_local(result, state, options, config, model, started)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. `emmr-score report ...`: beam_pipeline/report.py. A local batch run prints the summary;
    exit status 0 when the job succeeded and its counts add up, 1 otherwise. A remote run: 0 once submitted.
    Local streaming: runs until cancelled. Bad options or model: 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # the job's own progress is logged at INFO
    if argv[:1] == ["export"]:
        from beam_pipeline import exporter

        return exporter.main(argv[1:])
    if argv[:1] == ["report"]:
        if "-h" in argv or "--help" in argv:
            print(report_help())
            return 0
        from beam_pipeline import report

        return report.main(argv[1:])
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import OptionsError, runs_in_process
    from beam_pipeline.report import JobSummary, exit_status

    try:
        out = run(argv)
    except OptionsError as e:
        log.error("%s", e)
        return 2
    except Exception as e:  # noqa: BLE001 - the job failed (e.g. a worker could not load the model): say why, exit 1
        log.error("the job failed: %s: %s", type(e).__name__, e)
        return 1
    if isinstance(out, JobSummary):
        print(out.text())
        return exit_status(out)
    if not runs_in_process(PipelineOptions(argv)):  # submitted: the launcher returns
        return 0
    out.wait_until_finish()  # local streaming: runs until cancelled or killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
