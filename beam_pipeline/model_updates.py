"""Model rollout without a gap: a streaming job follows --model_pattern and swaps models while it runs.

    --model_pattern 'gs://bucket/models/*/checkpoint.json' [--model_poll_s 60]

The newest checkpoint matching the pattern (by the time its checkpoint.json was written: copy a checkpoint whole,
checkpoint.json last) is served. The model handler swaps between two batches (`update_model_path`,
beam_pipeline/handler.py), so no message is dropped or scored twice for a swap, and every prediction names the
model that scored it (prediction v1 `model_version`). A candidate is checked before it is served (`verify`):
checkpoint.json readable, the weights' SHA-256 as recorded (streamed, nothing unpickled), the same modalities
(names, dimensions, maximum lengths) and labels as the job's model (decoding validates records against those).
One that fails is logged and counted (`emmr_model_updates_total{outcome="rejected"}`) and the model in service
stays; an accepted one counts as `accepted`.

How the handler learns of a new checkpoint depends on the runner:
- remote runners (Dataflow): Beam's `WatchFilePattern` side input, every --model_poll_s seconds, through
  `VerifyModel`; RunInference calls `update_model_path` and loads it between batches (`ModelUpdates`). The pattern
  should match the model the job starts with: the workers wait for the side input's first value.
- in-process runners (DirectRunner): the handler looks itself (`newest_checkpoint`, every --model_poll_s seconds,
  before a batch), because Beam 2.77's streaming DirectRunner can run neither WatchFilePattern (its splittable
  DoFns fail next to the job's GroupIntoBatches: "Transform node ... was not replaced as expected") nor a side
  input from an unbounded source in the global window (it holds the main input until that window closes, never).
"""

from __future__ import annotations

import logging
import threading

import apache_beam as beam
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.transforms import trigger, window

from beam_pipeline import metrics

log = logging.getLogger(__name__)
CHECKPOINT_JSON = "checkpoint.json"


def checkpoint_dir(path: str) -> str:
    """A checkpoint directory, from itself or its checkpoint.json."""
    path = path.strip().rstrip("/")
    return path[: -len(CHECKPOINT_JSON) - 1] if path.endswith("/" + CHECKPOINT_JSON) else path


def newest_checkpoint(pattern: str) -> str | None:
    """The directory of the newest checkpoint.json matching `pattern` (by its modification time), or None."""
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001 - an unreachable store: keep serving, look again later
        log.warning("cannot look for models at %s: %s", metrics.redact(pattern), e)
        return None
    if not found:
        return None
    newest = max(found, key=lambda m: (m.last_updated_in_seconds, m.path))
    return checkpoint_dir(newest.path)


def verify(path: str, job_config: dict) -> str:
    """The version of the checkpoint at `path` if it may replace the job's model; raises ValueError saying why not."""
    from emmr import checkpoint
    from emmr.config import ModelConfig

    from beam_pipeline.pipeline import verify_weights

    try:
        meta = checkpoint.read_meta(path)
        verify_weights(path)
    except checkpoint.CheckpointError as e:
        raise ValueError(str(e)) from e
    new, job = ModelConfig.from_dict(meta["model"]), ModelConfig.from_dict(job_config)
    if (tuple(new.modalities), tuple(new.label_names)) != (tuple(job.modalities), tuple(job.label_names)):
        raise ValueError(f"its modalities {new.modalities} and labels {new.label_names} differ from the job's "
                         f"{job.modalities} and {job.label_names} (records are validated against those)")
    return meta["model_version"]


_checked: dict[str, str | None] = {}  # candidate -> version (None: rejected), once per process
_checked_lock = threading.Lock()


def checked(path: str, job_config: dict, rec: metrics.Recorder) -> str | None:
    """verify(), logged and counted once per process and candidate: the version, or None (rejected)."""
    with _checked_lock:
        if path in _checked:
            return _checked[path]
        try:
            version = verify(path, job_config)
        except Exception as e:  # noqa: BLE001 - a bad candidate never replaces the model in service
            log.error("model update %s rejected, the current model stays: %s", metrics.redact(path), e)
            rec.count(metrics.MODEL_UPDATES, outcome="rejected")
            version = None
        else:
            log.info("model update %s (version %s) accepted", metrics.redact(path), version)
            rec.count(metrics.MODEL_UPDATES, outcome="accepted")
        _checked[path] = version
        return version


class VerifyModel(beam.DoFn):
    """Remote runners: a watched checkpoint -> ModelMetadata(model_id=its directory), if it may be served."""

    def __init__(self, job_config: dict, metrics_port: int = 0, metrics_addr: str = "0.0.0.0"):
        self._config, self._port, self._addr = job_config, metrics_port, metrics_addr

    def setup(self):
        self.rec = metrics.Recorder()
        metrics.serve(self._port, self._addr)

    def process(self, found):
        path = checkpoint_dir(found.model_id)
        version = checked(path, self._config, self.rec)
        if version is not None:
            yield ModelMetadata(model_id=path, model_name=f"model_{version}")


class ModelUpdates(beam.PTransform):
    """Remote runners: the side input RunInference follows (WatchFilePattern -> VerifyModel, global window, a
    pane per model)."""

    def __init__(self, pattern: str, job_config: dict, poll_s: float = 60.0, metrics_port: int = 0,
                 metrics_addr: str = "0.0.0.0"):
        super().__init__()
        self._pattern, self._config, self._poll_s = pattern, job_config, poll_s
        self._port, self._addr = metrics_port, metrics_addr

    def expand(self, pbegin):
        from apache_beam.ml.inference.utils import WatchFilePattern

        return (pbegin
                | "WatchModels" >> WatchFilePattern(file_pattern=self._pattern, interval=self._poll_s)
                | "VerifyModel" >> beam.ParDo(VerifyModel(self._config, self._port, self._addr))
                | "Latest" >> beam.WindowInto(window.GlobalWindows(),
                                              trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                                              accumulation_mode=trigger.AccumulationMode.DISCARDING))
