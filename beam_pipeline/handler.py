"""The EMMR model handler for RunInference: ScoringBatches in (ids travel inside them), ScoredBatches out.

Beam's PyTorch handler stacks one tensor per example and cannot batch variable-length or missing modalities;
this one takes compact Arrow records (beam_pipeline/elements.py), pads them here, just before the model, into
buffers it reuses (beam_pipeline/padding.py: every modality to the model's max_len, length 0 = missing; pinned
host memory on CUDA), lets emmr.scorer.Scorer turn them into torch on the chosen device under
`torch.inference_mode`, and hands numpy back. Torch never leaves this module.

Batching: in batch mode each element holds at least --batch_size records, more when they are small (about 8 MiB of
Arrow: beam_pipeline/decode.py ELEMENT_BYTES, since Beam's cost is per element), so RunInference's BatchElements
weighs elements by their record count and groups small ones up to --batch_size (it never splits one); in
streaming the job batches messages before decoding (size and latency bound), so each element is a batch and
RunInference's own batching is skipped (`should_skip_batching`). Either way the handler cuts what it gets into
model batches of at most --batch_size records.

A failure never takes its batch neighbours with it: when the model raises on a batch something records can cause
(beam_pipeline/faults.py), the batch is bisected until only the records that fail on their own remain; they come
back as `failures` (-> dead letters of kind inference_error), as do records whose probabilities are not finite
(non_finite_output). A record-caused error outside the model call is raised as `BatchFailed`, which RunInference's
exception output takes and the pipeline turns into dead letters for the batch. Infrastructure faults (a broken CUDA
context, a driver mismatch, host memory, the disk) are re-raised as they are: the bundle fails and the runner
retries it, instead of the job dead-lettering its whole input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler

from beam_pipeline import metrics
from beam_pipeline.dead_letters import INFERENCE_ERROR, NON_FINITE_OUTPUT
from beam_pipeline.elements import ScoringBatch
from beam_pipeline.faults import BatchFailed, caused_by_records
from beam_pipeline.padding import Padder
from emmr.batch import ModalityBatch
from emmr.scorer import Scorer, Scores

log = logging.getLogger(__name__)
_served: dict = {}  # the labels of emmr_model_info this process exports (the model of its latest batch)
_served_lock = threading.Lock()
SCORE_FIELDS = ("probabilities", "label_index", "key_missing", "key_missing_score", "key_modality", "label_full",
                "label_pair", "ensemble_used")


@dataclass
class ModelInfo:
    version: str
    device: str
    requested_device: str
    load_seconds: float
    label_names: tuple[str, ...]
    modality_names: tuple[str, ...]


class LoadedModel:
    """A loaded Scorer behind two picklable calls, so that it can also be shared across processes
    (RunInference's MultiProcessShared proxies method calls, not attributes)."""

    def __init__(self, scorer: Scorer, requested_device: str):
        self._scorer, self._requested = scorer, requested_device

    def score(self, records: ModalityBatch) -> Scores:
        return self._scorer.score(records)

    def info(self) -> ModelInfo:
        s = self._scorer
        return ModelInfo(version=s.version, device=str(s.device), requested_device=self._requested,
                         load_seconds=float(getattr(s, "load_seconds", 0.0)), label_names=tuple(s.config.label_names),
                         modality_names=tuple(s.config.modality_names))


@dataclass
class ScoredBatch:
    """The handler's output for one input element: its records, their scores, and the records that failed."""

    batch: ScoringBatch
    scores: Scores  # one row per record; rows of failed records hold placeholders
    failures: dict[int, tuple[str, str]]  # record index -> (dead-letter kind, message)
    model: ModelInfo
    scored_at_us: int = 0
    present: np.ndarray | None = None  # (B, M) bool: the modalities each record has (from padding)

    def ok(self) -> np.ndarray:
        """(B,) bool: records with a prediction."""
        keep = np.ones(len(self.batch), dtype=bool)
        keep[list(self.failures)] = False
        return keep


@dataclass
class _Outcome:
    scores: Scores
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)


def _empty_scores(n: int, classes: int) -> Scores:
    return Scores(probabilities=np.zeros((n, classes), np.float32), label_index=np.zeros(n, np.int64),
                  key_missing=np.zeros(n, bool), key_missing_score=np.zeros(n, np.float32),
                  key_modality=np.full(n, -1, np.int64),
                  label_full=np.zeros(n, np.int64), label_pair=np.full(n, -1, np.int64),
                  ensemble_used=np.zeros(n, bool))


def _assign(dst: Scores, start: int, src: Scores) -> None:
    for f in SCORE_FIELDS:
        part = getattr(src, f)
        getattr(dst, f)[start : start + len(part)] = part


def _slice(s: Scores, start: int, stop: int) -> Scores:
    return Scores(**{f: getattr(s, f)[start:stop] for f in SCORE_FIELDS})


def score_robustly(model: LoadedModel, records: ModalityBatch, classes: int) -> _Outcome:
    """Score a batch; on an exception records can cause, bisect so that only records failing on their own are
    reported. Any other exception (infrastructure: beam_pipeline/faults.py) is re-raised: the bundle fails."""
    try:
        scores = model.score(records)
        if len(scores.probabilities) != len(records):
            raise RuntimeError(f"the model returned {len(scores.probabilities)} rows for {len(records)} records")
        out = _Outcome(scores)
    except Exception as e:
        if not caused_by_records(e):
            log.error("inference failed on a batch of %d records with an infrastructure fault (%r): failing the "
                      "bundle so that the runner retries it", len(records), e)
            raise
        if len(records) == 1:
            return _Outcome(_empty_scores(1, classes), {0: (INFERENCE_ERROR, f"the model raised {e!r}")})
        log.warning("inference failed on a batch of %d records (%r); bisecting", len(records), e)
        half = len(records) // 2
        left = score_robustly(model, records.take(np.arange(half)), classes)
        right = score_robustly(model, records.take(np.arange(half, len(records))), classes)
        scores = _empty_scores(len(records), classes)
        _assign(scores, 0, left.scores)
        _assign(scores, half, right.scores)
        out = _Outcome(scores, {**left.failures, **{half + i: f for i, f in right.failures.items()}})
    finite = np.isfinite(out.scores.probabilities).all(axis=1)
    for i in np.flatnonzero(~finite):
        out.failures.setdefault(int(i), (NON_FINITE_OUTPUT, "the model returned non-finite probabilities"))
    return out


class EMMRModelHandler(ModelHandler[ScoringBatch, ScoredBatch, LoadedModel]):
    def __init__(self, model_path: str, *, device: str = "cpu", autocast: str | None = None,
                 torch_threads: int | None = None, batch_size: int = 256, batch_duration_s: float | None = None,
                 share_model: bool = False, model_copies: int | None = None, clock=time, metrics_port: int = 0,
                 metrics_addr: str = "0.0.0.0", follow: str | None = None, follow_every_s: float = 60.0):
        """batch_duration_s: None in batch mode (RunInference batches elements up to batch_size records); seconds in
        streaming (the job batched messages already: RunInference's batching is skipped).
        metrics_port/metrics_addr: where the worker process serves /metrics (0: off), started when RunInference
        sets up, before the model loads. follow: in-process runners, a checkpoint.json glob this handler looks at
        every follow_every_s seconds, swapping to the newest checkpoint between batches (beam_pipeline/
        model_updates.py; remote runners follow it through a side input instead)."""
        super().__init__()
        self._padder: Padder | None = None
        self._follow, self._follow_every_s = follow, follow_every_s
        self._next_look, self._followed, self._rejected = 0.0, None, set()
        self._model_path, self._device, self._autocast = model_path, device, autocast
        self._torch_threads, self._batch_size, self._batch_duration_s = torch_threads, batch_size, batch_duration_s
        self._share, self._copies = share_model or model_copies is not None, model_copies
        self._clock = clock
        self._metrics_port, self._metrics_addr = metrics_port, metrics_addr
        self._info: ModelInfo | None = None
        self._recorder: metrics.Recorder | None = None

    def set_environment_vars(self) -> None:
        """Called by RunInference's DoFn.setup in the worker process, before it loads the model: /metrics is served
        from here on even if the model then fails to load (so that failure shows, as an absent emmr_model_info)."""
        super().set_environment_vars()
        metrics.serve(self._metrics_port, self._metrics_addr)

    def load_model(self) -> LoadedModel:
        """Load the checkpoint (safetensors + JSON, SHA-256 checked: emmr.checkpoint) and record emmr_model_info and
        emmr_model_load_seconds at once, so that "no emmr_model_info" means exactly "no model loaded".

        With --share_model Beam runs this in the process that holds the shared model, not in the worker process that
        serves /metrics; the worker then records both on its first batch (run_inference)."""
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)
        scorer = Scorer.load(self._model_path, self._device, self._autocast)
        log.info("loaded model %s from %s on %s (asked for %s) in %.2f s", scorer.version, self._model_path,
                 scorer.device, self._device, getattr(scorer, "load_seconds", 0.0))
        loaded = LoadedModel(scorer, self._device)
        self._info = loaded.info()
        self._record_model(self._info)
        return loaded

    def _record_model(self, info: ModelInfo) -> None:
        rec = self._recorder or metrics.Recorder()
        self._recorder = rec
        labels = {"version": info.version, "device": info.device, "requested_device": info.requested_device}
        with _served_lock:  # the process serves the model of its latest batch: one series, not one per swap
            previous = _served.get("labels")
            if previous is not None and previous != labels:
                rec.clear(metrics.MODEL_INFO, **previous)
            _served["labels"] = labels
            rec.set(metrics.MODEL_INFO, 1, **labels)
        rec.set(metrics.MODEL_LOAD, info.load_seconds)

    def update_model_path(self, model_path: str | None = None) -> None:
        """RunInference's hook for a model update (a side input of ModelMetadata, beam_pipeline/model_updates.py):
        the next load reads this checkpoint directory (a path to its checkpoint.json is taken as its directory).
        RunInference swaps models between batches, so each batch is scored by one model and says which
        (prediction v1 `model_version`)."""
        if not model_path:
            return
        path = model_path[: -len("/checkpoint.json")] if model_path.endswith("/checkpoint.json") else model_path
        if path != self._model_path:
            log.info("model update: %s -> %s", self._model_path, path)
            self._model_path, self._info = path, None

    def run_inference(self, batch: Sequence[ScoringBatch], model: LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[ScoredBatch]:
        """RunInference's hook: score_elements, with failures sorted (beam_pipeline/faults.py): a record-caused error
        that escapes it becomes BatchFailed (RunInference's exception output: dead letters for the batch); anything
        else propagates and fails the bundle."""
        try:
            return self.score_elements([batch] if isinstance(batch, ScoringBatch) else list(batch), model)
        except BatchFailed:
            raise
        except Exception as e:
            if caused_by_records(e):
                raise BatchFailed(f"{type(e).__name__}: {e}") from e
            raise

    def _follow_pattern(self, model: LoadedModel) -> LoadedModel:
        """In-process runners with --model_pattern: every follow_every_s seconds, before a batch, look for a newer
        checkpoint; an accepted one is loaded and scores from this batch on. Returns the model to score with."""
        if self._follow is None:
            return model
        now = self._clock.monotonic()
        if now >= self._next_look:
            from beam_pipeline import model_updates

            self._next_look = now + self._follow_every_s
            path = model_updates.newest_checkpoint(self._follow)
            if path and path != self._model_path and path not in self._rejected:
                config = self._model_config()
                if model_updates.checked(path, config.to_dict(), self._recorder or metrics.Recorder()) is None:
                    self._rejected.add(path)
                else:
                    self.update_model_path(path)
                    self._followed = self.load_model()
        return self._followed or model

    def _model_config(self):
        from emmr import checkpoint
        from emmr.config import ModelConfig

        return ModelConfig.from_dict(checkpoint.read_meta(self._model_path)["model"])

    def score_elements(self, elements: list[ScoringBatch], model: LoadedModel) -> list[ScoredBatch]:
        """Concatenate the elements' records, score them in model batches of at most --batch_size (score_robustly),
        split the scores back per element."""
        model = self._follow_pattern(model)
        if self._info is None:  # the model was loaded by another handler instance, or another process (shared)
            self._info = model.info()
        info = self._info
        self._record_model(info)  # again per batch: Beam metrics count only inside a bundle (the batch summary)
        rec = self._recorder
        scoring = [e for e in elements if len(e)]
        if not scoring:
            return [ScoredBatch(e, _empty_scores(0, len(info.label_names)), {}, info) for e in elements]
        tables = [e.table for e in scoring]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        n, classes = table.num_rows, len(info.label_names)
        scores, failures = _empty_scores(n, classes), {}
        padded = self.pad([table])  # once for the whole table (an element: about decode.ELEMENT_BYTES of records)
        present = padded.present()  # (n, M), the modalities each record has
        for start in range(0, n, self._batch_size):
            started = self._clock.perf_counter()
            records = padded.take(slice(start, start + self._batch_size))  # views of the padded buffers
            outcome = score_robustly(model, records, classes)
            rec.observe(metrics.INFERENCE_LATENCY, self._clock.perf_counter() - started)
            rec.observe(metrics.BATCH_SIZE, len(records))
            _assign(scores, start, outcome.scores)
            failures.update({start + i: f for i, f in outcome.failures.items()})
        scored_at_us = int(self._clock.time() * 1e6)
        out, start = [], 0
        for e in elements:
            stop = start + len(e)
            mine = {i - start: f for i, f in failures.items() if start <= i < stop}
            out.append(ScoredBatch(e, _slice(scores, start, stop), mine, info, scored_at_us, present[start:stop]))
            start = stop
        return out

    def pad(self, tables) -> ModalityBatch:
        """Canonical Arrow records -> the model's padded arrays, in this handler's reused buffers (the one place
        padding happens: beam_pipeline/padding.py)."""
        if self._padder is None:
            config = self._model_config()
            self._padder = Padder(tuple(config.modalities), pinned=self._device.startswith("cuda"))
        return self._padder.pad(tables)

    def get_num_bytes(self, batch) -> int:
        elements = [batch] if isinstance(batch, ScoringBatch) else batch
        return sum(e.table.nbytes for e in elements)

    def should_skip_batching(self) -> bool:
        """Streaming: elements are batches already (the job batches messages before decoding)."""
        return self._batch_duration_s is not None

    def get_metrics_namespace(self) -> str:
        return "emmr.RunInference"

    def batch_elements_kwargs(self) -> dict[str, Any]:
        """Batch mode: elements are record batches, weighed by record count (streaming skips this batching)."""
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size, "element_size_fn": len}

    def share_model_across_processes(self) -> bool:
        return self._share

    def model_copies(self) -> int:
        return self._copies or 1

    def __repr__(self) -> str:
        return f"EMMRModelHandler({self._model_path!r}, device={self._device!r})"
