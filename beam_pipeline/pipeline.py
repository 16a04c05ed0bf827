"""`build_pipeline(p, config, model)`: adds the scoring job's steps to a pipeline it is given.

    batch:      ReadParquetChunks -> DecodeChunks -> Reshuffle* ----------------------------------------+
    streaming:  ReadMessages -> PulledMessages -> Window (event time) -> KeyForBatching                 |
                  -> GroupIntoBatches.WithShardedKey (size, latency) -> DecodeMessageBatches ----------+
                                        | dead letters                 | ScoringBatch (compact Arrow, ids inside)
                                        |                     RunInference(EMMRModelHandler).with_exception_handling()
                                        |                     /      (pads, scores)          \\ failed batches
                                        |           FormatPredictions                      InferenceFailures
                                        |           /              \\ failed records          |
                                        |   prediction v1 tables     +------------------------+
                                        +-----------------------> Flatten -> CountDeadLetters -> dead letter v1
    predictions -> Parquet (--output) and/or JSON -> WriteToPubSub (--output_topic)
    dead letters -> Parquet, or JSON -> WriteToPubSub (--dead_letter as a topic)
    (Parquet: batch, the run's files finalised together, then _SUCCESS, beam_pipeline/batch_writes.py; streaming,
    --file_shards files per window, beam_pipeline/writes.py)

* remote runners only (Dataflow); in-process runners have one worker and go without.

Streaming moves tables, as batch mode does: messages are windowed by publication time (FixedWindows of
--window_s, allowed lateness --allowed_lateness_s), batched before decoding under one logical key that
GroupIntoBatches.WithShardedKey spreads over every worker thread (Dataflow shards it itself), at most --batch_size
messages or --batch_duration_s seconds per batch, then decoded and validated together. What the shuffle, the
batching state and the writes carry is compact Arrow; the handler pads (beam_pipeline/padding.py).

Every record leaves as exactly one prediction or one dead letter (conservation, counted by the metrics of
beam_pipeline/metrics.py). Elements are Arrow tables and numpy arrays; torch lives inside the handler.
"""

import logging
import math
import os
from dataclasses import dataclass, replace

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import trigger, window
from apache_beam.transforms.util import GroupIntoBatches

from beam_pipeline import acks, coders, dead_letters, metrics, outputs, paths
from beam_pipeline.acks import AckAfter
from beam_pipeline.batch_writes import WriteRunFiles
from beam_pipeline.decode import ELEMENT_BYTES, Decoder, as_message, decode_chunk_safely, decode_messages_safely
from beam_pipeline.elements import Message, ParquetChunk, ScoringBatch
from beam_pipeline.faults import BatchFailed
from beam_pipeline.handler import EMMRModelHandler, ScoredBatch
from beam_pipeline.jobs import new_local_id, new_run_id
from beam_pipeline.model_updates import ModelUpdates
from beam_pipeline.options import LOCAL_RUNNERS, JobConfig, OptionsError, check_options, runs_in_process  # noqa: F401
from beam_pipeline.sources import ReadMessages, ReadParquetChunks
from beam_pipeline.worker import ServeMetricsAtWorkerStart  # noqa: F401 - defined here, so Dataflow's workers import it
from beam_pipeline.writes import PublishTables, WriteWindowFiles
from emmr import checkpoint
from emmr.config import ModelConfig
from schemas.arrow import dead_letter_schema, prediction_schema
from schemas.message import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)
DEAD = "dead_letters"


@dataclass(frozen=True)
class ModelSpec:
    """What the job needs to know about the model when it is built (read from checkpoint.json)."""

    path: str
    version: str
    config: ModelConfig

    @classmethod
    def read(cls, path: str) -> "ModelSpec":
        meta = checkpoint.read_meta(path)
        return cls(path=path, version=meta["model_version"], config=ModelConfig.from_dict(meta["model"]))

    def decoder(self, batch_size: int) -> Decoder:
        return Decoder(self.config.modalities, self.config.num_classes, batch_size, ELEMENT_BYTES)

    def input_columns(self) -> list[str]:
        return ["id", *self.config.modality_names, "label", "event_time"]

    def max_row_bytes(self) -> int:
        """The most a valid record can weigh by sources.decoded_bytes (float64 values, every modality at max_len,
        counted decoded and encoded, plus 1 MiB for id, levels and the rest), never under the message limit: row
        groups whose rows average more are not read (oversized_row_group)."""
        values = sum(m.max_len * m.dim * 8 for m in self.config.modalities)
        return max(MAX_MESSAGE_BYTES, 2 * values + (1 << 20))


def verify_weights(path: str, chunk: int = 8 << 20) -> str:
    """Check, before the job starts, that the served weights are the ones the checkpoint recorded: model.safetensors
    exists, is within emmr.checkpoint's size limit and has the recorded SHA-256 (streamed; nothing is loaded, nothing
    unpickled). Returns the digest; raises CheckpointError naming the file and what is wrong. Workers check the
    hash again when they load the model (emmr.checkpoint.load)."""
    import hashlib

    from apache_beam.io.filesystems import FileSystems

    meta = checkpoint.read_meta(path)
    name = checkpoint.MODEL_FILE
    file = path.rstrip("/") + "/" + name if "://" in path else os.path.join(path, name)
    recorded = (meta.get("files") or {}).get(name)
    if not isinstance(recorded, str):
        raise checkpoint.CheckpointError(f"{path}: {checkpoint.META_FILE} records no SHA-256 for {name}")
    digest, size = hashlib.sha256(), 0
    try:
        with FileSystems.open(file, compression_type="uncompressed") as f:
            while block := f.read(chunk):
                size += len(block)
                if size > checkpoint.MAX_WEIGHTS_BYTES:
                    raise checkpoint.CheckpointError(f"{file} is larger than the limit of "
                                                     f"{checkpoint.MAX_WEIGHTS_BYTES} bytes")
                digest.update(block)
    except checkpoint.CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - missing, unreadable: the same error to the caller
        raise checkpoint.CheckpointError(f"cannot read {file}: {e}") from e
    if digest.hexdigest() != recorded:
        raise checkpoint.CheckpointError(f"{file}: SHA-256 {digest.hexdigest()[:12]}... does not match the recorded "
                                         f"{recorded[:12]}...; the file is corrupt or was replaced")
    return recorded


def prepare(options: PipelineOptions) -> tuple[JobConfig, ModelSpec]:
    """Check the options and the model before anything runs; raises OptionsError naming every problem.

    The checkpoint must be readable (its config gives the modalities to validate against), --input must match at
    least one file (a folder means its *.parquet), and every output must be writable (a probe file is written and
    deleted; beam_pipeline/paths.py). On an in-process runner the device is checked here too: cuda without a GPU is
    an error, never a silent CPU fallback (remote workers check it again when they load the model, and fail the
    same way).
    """
    config = check_options(options)
    try:
        spec = ModelSpec.read(config.model)
        verify_weights(config.model)
    except checkpoint.CheckpointError as e:
        raise OptionsError([f"--model {config.model!r}: {e}"]) from e
    problems = []
    if config.input:
        from apache_beam.io.filesystems import FileSystems

        try:
            config = replace(config, input=paths.input_pattern(config.input))
            if not FileSystems.match([config.input])[0].metadata_list:
                problems.append(f"--input {config.input!r}: no file matches")
        except Exception as e:  # noqa: BLE001 - an unreachable filesystem is a problem with --input
            problems.append(f"--input {config.input!r}: {e}")
    if config.output:
        config = replace(config, output=paths.output_prefix(config.output))
    if not config.dead_letter_is_topic:
        config = replace(config, dead_letter=paths.output_prefix(config.dead_letter))
    outputs = [(config.output, "--output", True), (config.summary_json, "--summary_json", False)]
    if not config.dead_letter_is_topic:
        outputs.append((config.dead_letter, "--dead_letter", True))
    problems += [p for p in (paths.check_writable(path, flag, prefix) for path, flag, prefix in outputs if path) if p]
    if problems:
        raise OptionsError(problems)
    if runs_in_process(options):
        from emmr.scorer import resolve_device

        try:
            resolve_device(config.device)
        except (RuntimeError, ValueError) as e:
            raise OptionsError([f"--device {config.device!r}: {e}"]) from e
    return config, spec


# --------------------------------------------------------------------------------------------- DoFns


class _Metered(beam.DoFn):
    """A DoFn that records metrics; streaming workers serve them on /metrics (once per process)."""

    def __init__(self, metrics_port: int = 0, metrics_addr: str = "0.0.0.0", known: dict | None = None):
        self._port, self._addr, self._known = metrics_port, metrics_addr, known or {}

    def setup(self):
        self.rec = metrics.Recorder()
        self.rec.declare(self._known)
        metrics.serve(self._port, self._addr)


class DecodeChunks(_Metered):
    """ParquetChunk -> ScoringBatches of its valid rows; invalid rows -> a dead-letter table (tagged)."""

    def __init__(self, decoder: Decoder, **kw):
        super().__init__(**kw)
        self._decoder = decoder

    def process(self, chunk: ParquetChunk):
        self.rec.count(metrics.INPUT_RECORDS, len(chunk) if chunk.table is not None else 1)
        batches, letters = decode_chunk_safely(chunk, self._decoder)
        yield from batches
        if letters:
            yield beam.pvalue.TaggedOutput(DEAD, dead_letters.table(letters))


class PulledMessages(_Metered):
    """PubsubMessage -> Message (bytes, attributes, id, publication time), counted as it enters the job."""

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        self.rec.count(metrics.INPUT_RECORDS)
        published = message.publish_time.timestamp() if message.publish_time is not None else float(timestamp)
        yield as_message(message.data, message.attributes, message.message_id, int(round(published * 1e6)))


def key_for_batching(message: Message):
    """One logical key: GroupIntoBatches.WithShardedKey spreads it over every worker thread (Dataflow: autosharded)."""
    return 0, message


class DecodeMessageBatches(_Metered):
    """(sharded key, [Message]) -> a ScoringBatch of the valid records; one dead-letter table (tagged)."""

    def __init__(self, decoder: Decoder, **kw):
        super().__init__(**kw)
        self._decoder = decoder

    def process(self, keyed):
        batches, letters = decode_messages_safely(list(keyed[1]), self._decoder)
        yield from batches
        if letters:
            yield beam.pvalue.TaggedOutput(DEAD, dead_letters.table(letters))


class FormatPredictions(_Metered):
    """ScoredBatch -> a prediction v1 table; records the model failed on -> a dead-letter table (tagged).

    With `sources` (acknowledging after output, beam_pipeline/acks.py) each table carries its rows' sources in its
    metadata, for the writers."""

    def __init__(self, modalities, sources: bool = False, **kw):
        super().__init__(**kw)
        self._modalities, self._sources = modalities, sources

    def process(self, scored: ScoredBatch):
        t = outputs.prediction_table(scored)
        self._count(scored, t)
        if t.num_rows:
            if self._sources:
                kept = np.flatnonzero(scored.ok())
                t = acks.with_sources(t, [scored.batch.source_of(int(i)) for i in kept])
            yield t
        if scored.failures:
            rows = sorted(scored.failures)
            by_kind: dict[str, list[int]] = {}
            for i in rows:
                by_kind.setdefault(scored.failures[i][0], []).append(i)
            letters = []
            for kind, idx in by_kind.items():
                letters += dead_letters.for_records(scored.batch, idx, kind, [scored.failures[i][1] for i in idx])
            yield beam.pvalue.TaggedOutput(DEAD, dead_letters.table(letters))

    def _count(self, scored: ScoredBatch, t: pa.Table) -> None:
        n = t.num_rows
        if not n:
            return
        info, keep, s = scored.model, scored.ok(), scored.scores
        self.rec.count(metrics.RECORDS, n, outcome=metrics.PREDICTED)
        for label, c in zip(info.label_names, np.bincount(s.label_index[keep], minlength=len(info.label_names))):
            self.rec.count(metrics.PREDICTIONS, int(c), label=label)
        present = scored.present[keep]
        for name, c in zip(info.modality_names, (~present).sum(axis=0)):
            self.rec.count(metrics.MISSING, int(c), modality=name)
        key = s.key_modality[keep][s.key_missing[keep]]
        for name, c in zip(info.modality_names, np.bincount(key, minlength=len(info.modality_names))):
            self.rec.count(metrics.KEY_MISSING, int(c), modality=name)
        self.rec.count(metrics.ENSEMBLE_USED, int(s.ensemble_used[keep].sum()))
        if scored.batch.publish_time_us is not None:
            self.rec.observe_many(metrics.END_TO_END_LATENCY, t.column("latency_s").to_numpy())


class InferenceFailures(beam.DoFn):
    """RunInference's exception output (batch, (type, repr, traceback)) -> dead letters for every record in it. Only
    BatchFailed gets there: what records can cause (beam_pipeline/faults.py)."""

    def __init__(self, modalities):
        self._modalities = modalities

    def process(self, failure):
        batch, (exc_type, exc_repr, _traceback) = failure
        elements = batch if isinstance(batch, (list, tuple)) else [batch]
        letters = []
        for e in elements:
            if isinstance(e, ScoringBatch) and len(e):
                letters += dead_letters.for_records(e, range(len(e)), dead_letters.INFERENCE_ERROR,
                                                    f"inference failed for its batch: {exc_repr}")
        if letters:
            yield dead_letters.table(letters)


class CountDeadLetters(_Metered):
    """Counts dead letters by reason as they leave (one place for every path that makes them)."""

    def process(self, t: pa.Table):
        self.rec.count(metrics.RECORDS, t.num_rows, outcome=metrics.DEAD_LETTER)
        kinds = t.column("error_kind").value_counts()
        for item in kinds.to_pylist():
            self.rec.count(metrics.DEAD_LETTERS, int(item["counts"]), reason=item["values"])
        yield t


# --------------------------------------------------------------------------------------------- the graph


def window_trigger(config: JobConfig) -> trigger.TriggerFn:
    """When a window's outputs are written: once the watermark has passed its end AND `window_s + grace` seconds
    have passed since its first element reached the write, so that records a little behind the watermark still make
    the window's first (and usually only) firing; later records fire again, each late firing a pane of its own
    (files named by pane). Records later than --allowed_lateness_s are dropped by Beam."""
    grace = max(5.0, 4 * config.batch_duration_s)  # room for a batch, and for a loaded worker
    delay = math.ceil(config.window_s + grace)  # whole seconds: Beam cannot translate a fractional delay
    return trigger.Repeatedly(trigger.AfterAll(trigger.AfterWatermark(), trigger.AfterProcessingTime(delay)))



@dataclass
class Outputs:
    predictions: beam.PCollection  # of prediction v1 tables
    dead_letters: beam.PCollection  # of dead letter v1 tables


def make_handler(config: JobConfig, model: ModelSpec) -> EMMRModelHandler:
    return EMMRModelHandler(
        model.path, device=config.device, autocast=config.autocast, torch_threads=config.torch_threads,
        batch_size=config.batch_size, batch_duration_s=config.batch_duration_s if config.streaming else None,
        share_model=config.share_model, model_copies=config.model_copies, metrics_port=config.metrics_port,
        metrics_addr=config.metrics_addr,
        follow=config.model_pattern if config.streaming and config.in_process else None,
        follow_every_s=config.model_poll_s)


def build_pipeline(p: beam.Pipeline, config: JobConfig, model: ModelSpec,
                   handler: EMMRModelHandler | None = None) -> Outputs:
    """Add the scoring job's steps to `p`; returns the prediction and dead-letter collections (for tests).

    `handler` replaces the model handler made from the options (tests inject faults through it)."""
    decoder = model.decoder(config.batch_size)
    coders.register()  # the job's elements: pickled, their sizes estimated without encoding them (coders.py)
    # Output files carry the run's id: run() makes it at launch; a caller that gave none gets one here.
    job_id = config.job_id or (new_local_id() if config.in_process else new_run_id(config.job_name))
    served = {"metrics_port": config.metrics_port, "metrics_addr": config.metrics_addr,
              "known": metrics.known_series(model.config.modality_names, model.config.label_names)}
    modalities = model.config.modalities
    ack_predictions = ack_dead = None
    if config.acks_after_output:  # a message is acknowledged once each of its outputs is written (acks.py)
        ack_predictions = AckAfter(config.input_subscription, int(bool(config.output)) + int(bool(config.output_topic)))
        ack_dead = AckAfter(config.input_subscription, 1)
    if config.streaming:
        decoded = (p
                   | "Read" >> ReadMessages(config.input_subscription, config.input_topic)
                   | "Pulled" >> beam.ParDo(PulledMessages(**served))
                   | "Window" >> beam.WindowInto(window.FixedWindows(config.window_s), trigger=window_trigger(config),
                                                 allowed_lateness=config.allowed_lateness_s,
                                                 accumulation_mode=trigger.AccumulationMode.DISCARDING)
                   | "KeyForBatching" >> beam.Map(key_for_batching).with_output_types(
                       beam.typehints.Tuple[int, beam.typehints.Any])
                   | "BatchMessages" >> GroupIntoBatches.WithShardedKey(config.batch_size, config.batch_duration_s)
                   | "Decode" >> beam.ParDo(DecodeMessageBatches(decoder, **served)).with_output_types(
                       ScoringBatch, **{DEAD: pa.Table}).with_outputs(DEAD, main="records"))
    else:
        chunks = coders.typed(p | "Read" >> ReadParquetChunks(config.input, columns=model.input_columns(),
                                                              max_row_bytes=model.max_row_bytes()), ParquetChunk)
        decoded = chunks | "Decode" >> beam.ParDo(DecodeChunks(decoder, **served)).with_output_types(
            ScoringBatch, **{DEAD: pa.Table}).with_outputs(DEAD, main="records")
    records = decoded.records
    if not config.streaming and not runs_in_process(p.options):
        # A row group is read and decoded by one worker; redistribute its record batches so that a file of few,
        # large row groups still spreads over every worker's model (a fusion break; numpy pickles cheaply).
        # In-process runners have one worker to spread over, and their Reshuffle holds the whole decoded input
        # in memory (benchmarks/memory.py), so they go without.
        records = records | "Spread" >> beam.Reshuffle()
    handler = handler or make_handler(config, model)
    # Only failures records can cause reach the exception output (BatchFailed, beam_pipeline/faults.py); an
    # infrastructure fault fails the bundle, and the runner retries it.
    updates = None
    if config.streaming and config.model_pattern and not config.in_process:  # a swap without a gap: model_updates.py
        updates = p | "ModelUpdates" >> ModelUpdates(config.model_pattern, model.config.to_dict(), config.model_poll_s,
                                                     config.metrics_port, config.metrics_addr)
    scored, failed = records | "Score" >> RunInference(handler, model_metadata_pcoll=updates).with_exception_handling(
        exc_class=BatchFailed)
    coders.typed(scored, ScoredBatch)
    formatted = scored | "Format" >> beam.ParDo(
        FormatPredictions(modalities, sources=ack_predictions is not None, **served)).with_output_types(
        pa.Table, **{DEAD: pa.Table}).with_outputs(DEAD, main="tables")
    failed_batches = failed.failed_inferences | "InferenceFailures" >> beam.ParDo(
        InferenceFailures(modalities)).with_output_types(pa.Table)
    dead = ((decoded[DEAD], formatted[DEAD], failed_batches)
            | "DeadLetters" >> beam.Flatten()
            | "CountDeadLetters" >> beam.ParDo(CountDeadLetters(**served)).with_output_types(pa.Table))
    predictions = formatted.tables

    parquet = {}  # output -> (its tables, file prefix, schema)
    if config.output:
        parquet["predictions"] = (predictions, config.file_prefix(config.output), prediction_schema())
    if config.output_topic:
        predictions | "PublishPredictions" >> PublishTables(config.output_topic, outputs.to_messages, ack_predictions)
    if config.dead_letter_is_topic:
        dead | "PublishDeadLetters" >> PublishTables(config.dead_letter, dead_letters.to_messages, ack_dead)
    else:
        parquet["dead_letters"] = (dead, config.file_prefix(config.dead_letter), dead_letter_schema())
    if config.streaming:  # files per window
        acks_of = {"predictions": ack_predictions, "dead_letters": ack_dead}
        for name, (tables, prefix, schema) in parquet.items():
            tables | f"Write{name.title().replace('_', '')}" >> WriteWindowFiles(
                prefix, schema, shards=config.file_shards, job_id=job_id, ack=acks_of[name])
    elif parquet:  # the run's files, finalised together, then _SUCCESS (batch_writes.py)
        {name: tables for name, (tables, _, _) in parquet.items()} | "WriteFiles" >> WriteRunFiles(
            {name: (prefix, schema) for name, (_, prefix, schema) in parquet.items()}, job_id, config.run_date)
    return Outputs(predictions=predictions, dead_letters=dead)
