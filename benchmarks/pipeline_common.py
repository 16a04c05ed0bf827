"""Helpers of the pipeline benchmarks (pipeline_efficiency.py, io_ceiling.py, memory.py): synthetic Parquet
inputs, random-weight checkpoints (cached under --work-dir), the batch job's argv, one in-process run of the
job (beam_pipeline.run.run on the DirectRunner) timed, and the model-only loop it is compared with.

Timing helpers, output and random checkpoints come from benchmarks/common.py.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import note, random_checkpoint  # noqa: E402
from emmr import checkpoint, synth  # noqa: E402
from emmr.batch import load_records  # noqa: E402
from emmr.config import ModelConfig, preset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORK_DIR = os.path.join(ROOT, "runs", "bench", "pipeline")


def quiet_logs() -> None:
    """The job logs at INFO per run; the benchmarks print their own lines."""
    logging.basicConfig(level=logging.WARNING)
    for name in ("beam_pipeline", "apache_beam", "emmr"):
        logging.getLogger(name).setLevel(logging.WARNING)


def model_dir(work_dir: str, preset_name: str) -> str:
    """A random-weight checkpoint of `preset_name` (written once, then reused while this code reads it and its
    configuration is the preset's as this code defines it)."""
    path = os.path.join(work_dir, f"{preset_name}-random")
    if os.path.exists(os.path.join(path, "checkpoint.json")):
        try:
            if ModelConfig.from_dict(checkpoint.read_meta(path)["model"]) == preset(preset_name):
                return path
        except (checkpoint.CheckpointError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(path)
    return random_checkpoint(preset_name, path)


def data_dir(work_dir: str, preset_name: str, records: int, seed: int = 0, missing_rate: float = 0.3) -> str:
    """A folder with `records` synthetic input v1 records of `preset_name` (emmr.synth.write), cached."""
    config = preset(preset_name)
    classes = config.num_classes if config.num_classes in (2, 3) else 3
    path = os.path.join(work_dir, f"data-{preset_name}-{records}-s{seed}")
    done = os.path.join(path, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(path, ignore_errors=True)
        synth.write(synth.SynthParams(records=records, seed=seed, classes=classes, missing_rate=missing_rate),
                    config.modalities, path)
        open(done, "w").close()
    return path


def job_argv(data: str, model: str, out: str, batch_size: int, threads: int, *extra: str) -> list[str]:
    """The batch job on the DirectRunner: Parquet in, predictions and dead letters out (Parquet)."""
    return ["--runner=DirectRunner", "--input", os.path.join(data, "*.parquet"), "--model", model,
            "--output", os.path.join(out, "predictions", "part"), "--dead_letter", os.path.join(out, "dead", "part"),
            "--batch_size", str(batch_size), "--torch_threads", str(threads), *extra]


def run_job(argv: list[str], out: str, records: int) -> float:
    """Run the batch job once in this process (beam_pipeline.run.run, start-up included: options, model
    checks, Beam graph, model load, read, score, write); returns wall seconds. Checks that every record came
    out as a prediction (none of the synthetic records is bad)."""
    from beam_pipeline.run import run

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = run(argv)
    seconds = time.perf_counter() - started
    if not (summary.conserved and summary.predictions == records and summary.state.endswith("DONE")):
        raise RuntimeError(f"the job did not score every record: {summary.text()}")
    return seconds


class ModelLoop:
    """The model-only loop: records read once with emmr.batch.load_records, then Scorer.score over them in
    batches of `batch_size`, in this process with `threads` torch threads. Time `__call__` only."""

    def __init__(self, model: str, data: str, batch_size: int, threads: int):
        from emmr.scorer import Scorer

        torch.set_num_threads(threads)
        self.scorer = Scorer.load(model)
        cfg = self.scorer.config
        self.batch, _ = load_records(data, cfg.modalities, cfg.num_classes)
        self.batch_size, self.threads = batch_size, threads

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self) -> int:
        torch.set_num_threads(self.threads)
        n = len(self.batch)
        scored = 0
        for start in range(0, n, self.batch_size):
            s = self.scorer.score(self.batch.take(np.arange(start, min(start + self.batch_size, n))))
            scored += len(s.label_index)
        return scored


def stop_processes(procs, grace_s: float) -> None:
    """Stop the benchmark's own processes (None entries skipped): TERM, then KILL what has not exited in grace_s."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def prediction_files(out: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, "predictions", "part-*.parquet")))


def describe_machine() -> None:
    try:
        load = os.getloadavg()
        note(f"machine: {os.cpu_count()} CPUs (shared), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        note(f"machine: {os.cpu_count()} CPUs")


# ---------------------------------------------------------------------------------------------- a no-op model


class NoOpScorer:
    """Stands in for emmr.scorer.Scorer: constant Scores of the right shapes (uniform probabilities, first
    label, nothing flagged), no torch. What the job costs around the model."""

    def __init__(self, meta: dict):
        from emmr.config import ModelConfig

        self.meta, self.device, self.load_seconds = meta, "cpu", 0.0
        self.config = ModelConfig.from_dict(meta["model"])
        self.version = meta["model_version"]

    def score(self, batch):
        from emmr.scorer import Scores

        n, c = len(batch), len(self.config.label_names)
        return Scores(probabilities=np.full((n, c), 1.0 / c, np.float32), label_index=np.zeros(n, np.int64),
                      key_missing=np.zeros(n, bool), key_missing_score=np.zeros(n, np.float32),
                      key_modality=np.full(n, -1, np.int64),
                      label_full=np.zeros(n, np.int64), label_pair=np.full(n, -1, np.int64),
                      ensemble_used=np.zeros(n, bool))


from beam_pipeline.handler import EMMRModelHandler, LoadedModel  # noqa: E402


class NoOpModelHandler(EMMRModelHandler):
    """EMMRModelHandler whose load_model serves a NoOpScorer (checkpoint.json is read, the weights are not)."""

    def load_model(self) -> LoadedModel:
        loaded = LoadedModel(NoOpScorer(checkpoint.read_meta(self._model_path)), self._device)
        self._info = loaded.info()
        self._record_model(self._info)
        return loaded


class no_op_model:
    """Context manager: while inside, jobs built by beam_pipeline.run.run get the no-op handler (the same
    injection point as tests/test_pipeline_batch.py's handler=, reached through pipeline.make_handler)."""

    def __enter__(self):
        from beam_pipeline import pipeline

        self._saved = pipeline.make_handler

        def make_handler(config, model):
            return NoOpModelHandler(model.path, device=config.device, torch_threads=config.torch_threads,
                                 batch_size=config.batch_size, metrics_port=config.metrics_port,
                                 metrics_addr=config.metrics_addr)

        pipeline.make_handler = make_handler
        return self

    def __exit__(self, *exc):
        from beam_pipeline import pipeline

        pipeline.make_handler = self._saved
