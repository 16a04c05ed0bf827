"""Shared helpers of the benchmarks: timing with warm-up and repeats, interleaved variants, random-weight
checkpoints, synthetic batches, and `name: value` output.

The machines these run on are shared and noisy, so a comparison is measured as RATIOS within one run: the
variants take turns (A B, then B A, ...), each round gives one ratio, and the median of the rounds is
reported. Absolute figures are medians of repeats and say how busy the machine was (see docs/performance.md).

Only torch, numpy, pyarrow, safetensors and this repository's `emmr`/`schemas` packages are imported here
(no apache_beam, yaml or tqdm), so that benchmarks/gpu.py runs on a bare CUDA machine with PYTHONPATH=. .
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch

from emmr import checkpoint, synth
from emmr.batch import ModalityBatch, concat_batches, from_arrow
from emmr.config import ModelConfig, preset
from emmr.nn.emmr import EMMR

# ---------------------------------------------------------------------------------------------- output


def emit(name: str, value, out: dict | None = None) -> None:
    """Print `name: value` (floats with 4 significant digits) and record it in `out`."""
    if isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    print(f"{name}: {text}", flush=True)
    if out is not None:
        out[name] = value


def note(text: str) -> None:
    """A comment line (starts with '#', so `name: value` parsers skip it)."""
    print(f"# {text}", flush=True)


def write_json(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def environment() -> dict:
    """What the figures were measured on."""
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        env["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda_version"] = torch.version.cuda
    return env


# ---------------------------------------------------------------------------------------------- timing


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, min_seconds: float = 0.0,
              max_repeats: int = 1000, device: torch.device | str | None = None) -> list[float]:
    """Seconds per call of `fn`: `warmup` untimed calls, then at least `repeats` timed ones (more until
    `min_seconds` of timed calls, at most `max_repeats`). GPU work is synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def interleave(variants: dict[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 1, calls: int = 1,
               device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured in turns: round r runs the variants in order, or in
    reverse order on odd rounds, so that a drift in machine load hits them alike. Each sample is the mean of
    `calls` back-to-back calls (to make short calls long enough to time). -> name -> seconds per call, per round."""
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            fn = variants[n]
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            times[n].append((time.perf_counter() - started) / calls)
    return times


def calls_for(fn: Callable[[], object], sample_seconds: float, device: torch.device | str | None = None) -> int:
    """How many back-to-back calls of `fn` take about `sample_seconds` (one probe call, after one warm-up)."""
    one = min(time_call(fn, warmup=1, repeats=2, device=device))
    return max(1, round(sample_seconds / max(one, 1e-9)))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of per-round ratios of two interleaved series (robust to load that changes between rounds)."""
    return median(ratios(numerator, denominator))


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """The per-round ratios of two interleaved series."""
    return [a / b for a, b in zip(numerator, denominator)]


def quartiles(xs: list[float]) -> tuple[float, float]:
    """(first, third) quartile: the spread of per-round ratios to quote beside their median."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def spread(xs: list[float]) -> float:
    """(max - min) / median: how noisy a series was."""
    return (max(xs) - min(xs)) / median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------- models and data


def random_model(config: ModelConfig | str, seed: int = 0) -> EMMR:
    """EMMR with its initial (random) weights, in eval mode."""
    config = preset(config) if isinstance(config, str) else config
    torch.manual_seed(seed)
    return EMMR(config).eval()


def random_checkpoint(config: ModelConfig | str, path: str, seed: int = 0) -> str:
    """Write a checkpoint of an untrained EMMR for `config` (a preset name or a ModelConfig) to `path`;
    returns `path`. Its metadata says the weights are random."""
    name = config if isinstance(config, str) else "custom"
    model = random_model(config, seed)
    checkpoint.save(path, model, method="emmr", train_config={"note": "random weights for benchmarks", "seed": seed},
                    metrics={}, data_fingerprint={"note": f"untrained, preset {name}"})
    return path


def flop_counts(scorer, batch) -> dict[str, float]:
    """FLOPs per record by torch's flop counter, grad mode on (torch's fused inference kernels stay off): the whole
    batch at max_len and every record alone at its own lengths (needed: a missing modality still at max_len, which
    recovery fills), both as the model computed before issue #14 (attention.reference(): every slot decoded, every
    pair head on every row that misses a modality), and the Scorer's buckets as it computes them now (spent: fused
    attention, only the slots and heads whose results are read; emmr/nn/emmr.py _infer). The counter sees the
    matmuls (projections, feed-forward, heads), not the attention scores inside scaled_dot_product_attention,
    which neither path exposes to it."""
    from torch.utils.flop_counter import FlopCounterMode

    from emmr.batch import length_buckets
    from emmr.nn import attention
    from emmr.tensors import DeviceInputs

    names = scorer.config.modality_names
    max_lens = tuple(m.max_len for m in scorer.config.modalities)
    lengths = np.stack([batch.lengths[n] for n in names], axis=1)
    inputs = DeviceInputs(scorer.device)
    features, lengths_t = inputs.put(batch, names)
    plans = {"max_len": None, "spent": scorer.plan(lengths),
             "needed": length_buckets(lengths, max_lens, 1)}
    out = {}
    for name, plan in plans.items():
        parts = [(features, lengths_t)] if plan is None else [inputs.bucket(features, lengths_t, b) for b in plan]
        counter = FlopCounterMode(display=False)
        with torch.enable_grad(), attention.reference() if name != "spent" else contextlib.nullcontext(), counter:
            for f, l in parts:
                scorer.model(f, l, mode="flagged")
        out[name] = counter.get_total_flops() / len(batch)
    return out


def synthetic_batch(config: ModelConfig, records: int, *, missing_rate: float = 0.3, seed: int = 0,
                    chunk: int = 512, truth: bool = False):
    """`records` synthetic input v1 records for `config`'s modalities (one modality missing in `missing_rate`
    of them), as a ModalityBatch. Generated in chunks to bound memory (the paper preset is ~0.4 MB a record).
    With `truth`: (batch, key_missing (records,) bool: the dropped modality was key, by the generator's truth)."""
    classes = config.num_classes if config.num_classes in (2, 3) else 3
    params = synth.SynthParams(records=records, seed=seed, classes=classes, missing_rate=missing_rate)
    parts, keys = [], []
    names = list(config.modality_names)
    for start in range(0, records, chunk):
        table = synth.generate(params, config.modalities, start, min(chunk, records - start))
        parts.append(from_arrow(table, config.modalities))
        if truth:
            dropped = table.column("dropped").to_pylist()
            key = {n: table.column(f"key_{n}").to_numpy(zero_copy_only=False) for n in names}
            keys.append(np.array([d is not None and bool(key[d][i]) for i, d in enumerate(dropped)]))
    batch = concat_batches(parts)
    return (batch, np.concatenate(keys)) if truth else batch



def tile(batch: ModalityBatch, records: int) -> ModalityBatch:
    """A batch of `records` rows, repeating `batch`'s rows in order (cheap large batches from a small pool)."""
    index = np.arange(records) % len(batch)
    return batch.take(index)


def missing_fraction(batch: ModalityBatch) -> float:
    return float((~batch.present()).any(axis=1).mean())


def bytes_per_record(batch: ModalityBatch) -> float:
    """Bytes the scorer copies to the device per record: padded float32 features plus int64 lengths."""
    total = sum(f.nbytes for f in batch.features.values()) + 8 * len(batch.names) * len(batch)
    return total / len(batch)
