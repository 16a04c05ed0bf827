"""Entry point of the scoring job: `python -m beam_pipeline.run` or `emmr-score`.

    emmr-score --runner=DirectRunner --input 'data/*.parquet' --model runs/ckpt \\
        --output out/predictions --dead_letter out/dead_letters [--pushgateway 127.0.0.1:9091]
    emmr-score --runner=DirectRunner --streaming --input_subscription projects/P/subscriptions/S \\
        --model gs://bucket/ckpt --output_topic projects/P/topics/predictions \\
        --dead_letter projects/P/topics/dead-letters --metrics_port 9464

`run(argv, test_pipeline)` checks the options and the model, builds the job on a new pipeline (or on the one
given), runs it and, for a batch run, waits for it: it logs the summary (records in = predictions + dead
letters, dead letters by reason, key-missing flags by modality) from the job's Beam metrics, checks that the
counts add up, and pushes the summary to the Pushgateway when --pushgateway is given.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from beam_pipeline.flags import help_text

if TYPE_CHECKING:  # Beam and torch load when a job is built, not for `emmr-score --help`
    import apache_beam as beam

    from beam_pipeline import metrics
    from beam_pipeline.options import JobConfig
    from beam_pipeline.pipeline import ModelSpec

log = logging.getLogger("beam_pipeline")


@dataclass
class JobSummary:
    """What a finished batch run did, from its Beam metrics."""

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

    @property
    def conserved(self) -> bool:
        return self.records_in == self.predictions + self.dead_letters

    @classmethod
    def from_snapshot(cls, state: str, s: metrics.Snapshot, seconds: float, config: JobConfig,
                      model: ModelSpec) -> "JobSummary":
        from beam_pipeline import metrics

        labels, modalities = model.config.label_names, model.config.modality_names
        versions = [metrics.parse_series(k)[1].get("version") for k in s.gauges
                    if metrics.parse_series(k)[0] == metrics.MODEL_INFO.name]
        return cls(
            state=state,
            records_in=s.total(metrics.INPUT_RECORDS),
            predictions=s.total(metrics.RECORDS, outcome=metrics.PREDICTED),
            dead_letters=s.total(metrics.RECORDS, outcome=metrics.DEAD_LETTER),
            dead_letters_by_reason=dict(sorted(s.by_label(metrics.DEAD_LETTERS, "reason").items())),
            predictions_by_label=s.by_label(metrics.PREDICTIONS, "label", labels),
            key_missing_by_modality=s.by_label(metrics.KEY_MISSING, "modality", modalities),
            missing_by_modality=s.by_label(metrics.MISSING, "modality", modalities),
            ensemble_used=s.total(metrics.ENSEMBLE_USED),
            model_version=versions[0] if versions else None,
            seconds=round(seconds, 3),
            outputs=config.outputs(),
        )

    def text(self) -> str:
        def fmt(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

        lines = [
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
        lines += [f"{k + ':':15} {v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None, save_main_session: bool = False):
    """Build and run the job. Batch: returns the JobSummary once it finished. Streaming: returns the running
    PipelineResult (cancel it to stop). Raises OptionsError for options or a model that cannot make a job.

    With `test_pipeline` (a TestPipeline), the job is built on it and run with its options; `argv` still
    describes the job."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import acks, metrics
    from beam_pipeline.pipeline import build_pipeline, prepare

    options = PipelineOptions(argv)
    if save_main_session:
        from apache_beam.options.pipeline_options import SetupOptions

        options.view_as(SetupOptions).save_main_session = True
    config, model = prepare(options)
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
        acks.install()
        acks.hold(config.input_subscription, max_in_flight=acks.max_in_flight(config))
    result = p.run()
    if config.streaming:
        return result
    state = result.wait_until_finish()
    seconds = time.time() - started
    snapshot = metrics.Snapshot.from_result(result)
    summary = JobSummary.from_snapshot(str(state), snapshot, seconds, config, model)
    log.info("%s after %.1f s: records in %d = %d predictions + %d dead letters", state, seconds, summary.records_in,
             summary.predictions, summary.dead_letters)
    if not summary.conserved:
        log.error("records in (%d) != predictions (%d) + dead letters (%d)", summary.records_in, summary.predictions,
                  summary.dead_letters)
    if config.summary_json:
        with FileSystems.create(config.summary_json) as f:
            f.write(json.dumps({**asdict(summary), "conserved": summary.conserved}, indent=2).encode())
    if config.pushgateway:
        known = metrics.known_series(model.config.modality_names, model.config.label_names)
        try:
            metrics.push_summary(config.pushgateway, config.job_name, metrics.summary_registry(snapshot, seconds, known))
        except OSError as e:
            log.error("could not push the job summary to the Pushgateway %s: %s", metrics.redact(config.pushgateway),
                      metrics.redact(str(e)))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Batch: prints the summary; exit status 0 when the job succeeded and its counts add
    up, 1 otherwise. Streaming: runs until cancelled. Bad options or model: 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # the job's own progress is logged at INFO
    from beam_pipeline.options import OptionsError

    try:
        out = run(argv)
    except OptionsError as e:
        log.error("%s", e)
        return 2
    except Exception as e:  # noqa: BLE001 - the job failed (e.g. a worker could not load the model): say why, exit 1
        log.error("the job failed: %s: %s", type(e).__name__, e)
        return 1
    if not isinstance(out, JobSummary):  # streaming: runs until cancelled or killed
        out.wait_until_finish()
        return 0
    print(out.text())
    return 0 if out.conserved and out.state.endswith("DONE") else 1


if __name__ == "__main__":
    sys.exit(main())
