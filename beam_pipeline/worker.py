"""Worker start-up: serve /metrics as soon as a streaming worker process starts, before its first element.

A DoFn's setup runs when its first bundle arrives, so a worker that only served /metrics from setup stayed silent
(and unscraped: EmmrStreamingJobAbsent) until the first message came. Two hooks start the server earlier:

- On Dataflow (and any runner with Beam's SDK harness), `ServeMetricsAtWorkerStart` is a BeamPlugin: the
  DataflowRunner lists every BeamPlugin subclass defined at submission in --beam_plugins, and the SDK harness
  imports them when the worker process starts (`sdk_worker_main.create_harness`). Importing this module there
  reads the job's options from the harness environment and calls `metrics.serve`.
- On an in-process runner (the DirectRunner) the launching process is the worker: `run()` calls `metrics.serve`
  before it starts the pipeline.

The DoFns' setup and the model handler's setup still call `metrics.serve` (once per process: later calls return
the port already served).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from apache_beam.utils.plugin import BeamPlugin

log = logging.getLogger(__name__)
HARNESS_MARKER = "CONTROL_API_SERVICE_DESCRIPTOR"  # set for the SDK harness process (sdk_worker_main), nowhere else


class ServeMetricsAtWorkerStart(BeamPlugin):
    """Defined so that Beam passes this module to its workers in --beam_plugins; the work happens on import."""


def harness_options(environ: Mapping[str, str]):
    """The job's PipelineOptions as the SDK harness reads them (PIPELINE_OPTIONS or PIPELINE_OPTIONS_FILE)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.worker.sdk_worker_main import _load_pipeline_options

    text = environ.get("PIPELINE_OPTIONS")
    if "PIPELINE_OPTIONS_FILE" in environ:
        with open(environ["PIPELINE_OPTIONS_FILE"]) as f:
            text = f.read()
    return PipelineOptions.from_dictionary(_load_pipeline_options(text))


def on_worker_start(environ: Mapping[str, str] = os.environ) -> int | None:
    """In an SDK harness process of a streaming job: serve /metrics now; returns the port (None elsewhere or when
    off). Never raises: a worker that cannot serve metrics still scores (the DoFns' setup tries again)."""
    if HARNESS_MARKER not in environ:
        return None
    try:
        from apache_beam.options.pipeline_options import StandardOptions

        from beam_pipeline import metrics
        from beam_pipeline.options import ScoringOptions, metrics_port

        options = harness_options(environ)
        o = options.view_as(ScoringOptions)
        port = metrics_port(o.metrics_port, bool(options.view_as(StandardOptions).streaming))
        served = metrics.serve(port, o.metrics_addr or "0.0.0.0")
        if served:  # the unlabelled counters at 0 (emmr_input_records_total: "no input" needs the series)
            metrics.Recorder().declare({})
        return served
    except Exception:  # noqa: BLE001 - worker start must not fail because of metrics
        log.warning("could not serve /metrics at worker start; the job's DoFns will try again", exc_info=True)
        return None


on_worker_start()
