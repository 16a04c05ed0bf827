"""GPU benchmark of the EMMR scorer, in one run of at most ~5 minutes on a CUDA machine.

Measures, for the paper preset (random weights, or the checkpoint given with --checkpoint):
  * records/s of Scorer.score (numpy in -> numpy out, the copies included) at several batch sizes, interleaved:
    float32, float32 with TF32 matmuls, bfloat16 autocast (length buckets and fused attention, issue #14), and the
    path before issue #14 (the whole batch at max_len, torch's own attention) in float32 and bfloat16; and of the
    model alone (the batch's buckets already on the device);
  * host-to-device copy rate from pinned and from pageable memory (GB/s), and of the scorer's own input path
    (emmr.tensors.DeviceInputs.put: through reused page-locked buffers, non-blocking copies);
  * the model's FLOPs per record by torch's flop counter: at max_len, in the Scorer's buckets (spent) and with each
    record alone at its own lengths (needed); the measured matrix rate (a 16384^3 bf16, fp32 and TF32 matmul);
  * the fraction of the compute ceiling (records/s x FLOPs spent per record / matmul rate) and of the transfer
    ceiling (records/s x bytes/record / pinned copy rate) that each configuration reaches;
  * whether bfloat16 (and TF32) predictions agree with float32 on a synthetic test set: equal labels (goal 99.5 %)
    and key-missing flags (goal 99 %), the condition for bfloat16 as the GPU default (`bf16_default_ok`);
  * with budget left, torch.compile of the model (bfloat16, the largest batch), against the same without.

Every measurement is guarded: one that fails prints its error and the others go on. Results are printed as
`name: value` lines and written as JSON (after every section, so a run cut short keeps what it had).
Only torch, numpy, pyarrow, safetensors and this repository (PYTHONPATH=.) are needed; no apache_beam.

  PYTHONPATH=. python benchmarks/gpu.py --json $OUT/gpu.json [--checkpoint DIR]
  PYTHONPATH=. python benchmarks/gpu.py --device cpu --quick --json /tmp/gpu-cpu.json   # a smoke test, < 2 min
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (bytes_per_record, emit, environment, flop_counts, interleave, median,  # noqa: E402
                               missing_fraction, note, random_model, spread, sync, synthetic_batch, tile, time_call,
                               write_json)
from emmr import checkpoint  # noqa: E402
from emmr.nn import attention  # noqa: E402
from emmr.scorer import Scorer, resolve_device  # noqa: E402
from emmr.tensors import DeviceInputs  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
LABEL_AGREEMENT_GOAL, FLAG_AGREEMENT_GOAL = 0.995, 0.99  # for bfloat16 as the GPU default (issue #14)


@contextlib.contextmanager
def tf32(enabled: bool = True):
    """float32 matmuls (and convolutions) on TF32 tensor cores while inside."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def variants(scorers: dict[str, Scorer], batch) -> dict:
    """The scoring calls compared at each batch size."""

    def with_tf32():
        with tf32():
            return scorers["float32"].score(batch)

    def old(name):
        def call():
            with attention.reference():
                return scorers[name].score(batch, trim=False)
        return call

    return {"float32": lambda: scorers["float32"].score(batch), "tf32": with_tf32,
            "bfloat16": lambda: scorers["bfloat16"].score(batch), "old_float32": old("float32"),
            "old_bfloat16": old("bfloat16")}


class Run:
    """Results, errors and the time budget of one benchmark run; JSON written after every section."""

    def __init__(self, json_path: str | None, budget_s: float):
        self.json_path, self.budget_s = json_path, budget_s
        self.started = time.perf_counter()
        self.results: dict = {}
        self.details: dict = {}
        self.errors: list[dict] = []
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def emit(self, name: str, value) -> None:
        emit(name, value, self.results)

    @contextlib.contextmanager
    def section(self, name: str, needs_s: float = 0.0):
        """Run a block; on failure print the error and go on. Skipped when less than needs_s is left."""
        if self.left() < needs_s:
            note(f"SKIPPED {name}: {self.left():.0f} s left of the budget, it needs about {needs_s:.0f} s")
            self.skipped.append(name)
            yield False
            return
        started = time.perf_counter()
        note(f"--- {name} ({self.left():.0f} s of budget left)")
        try:
            yield True
        except Exception as e:  # noqa: BLE001 - one failed measurement must not stop the others
            print(f"# ERROR in {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=4, file=sys.stdout)
            self.errors.append({"section": name, "error": f"{type(e).__name__}: {e}"})
            if torch.cuda.is_available():
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
        finally:
            self.details.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 2)
            self.save()

    def save(self) -> None:
        if self.json_path:
            write_json(self.json_path, {"results": self.results, "details": self.details, "errors": self.errors,
                                        "skipped": self.skipped, "elapsed_s": round(time.perf_counter() - self.started, 1)})


# ---------------------------------------------------------------------------------------------- rates


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_call(lambda: torch.mm(a, b), warmup=2, repeats=3, min_seconds=seconds, device=device)
    return 2 * n**3 / median(times) / 1e12


def copy_gbps(nbytes: int, device: torch.device, pinned: bool, seconds: float) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(1)
    dest = torch.empty(nbytes, dtype=torch.uint8, device=device)
    times = time_call(lambda: dest.copy_(host, non_blocking=pinned), warmup=2, repeats=3, min_seconds=seconds,
                      device=device)
    return nbytes / median(times) / 1e9


def rounds_for(seconds_per_call: float, target_s: float, lo: int = 3, hi: int = 40) -> int:
    return int(min(hi, max(lo, math.ceil(target_s / max(seconds_per_call, 1e-6)))))


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (a smoke test)")
    p.add_argument("--checkpoint", help="a trained checkpoint directory; default: random weights of --preset")
    p.add_argument("--preset", default="paper", help="model preset when no checkpoint is given (default paper)")
    p.add_argument("--sizes", help="batch sizes, comma-separated (default 1024,4096,16384; quick: 4,8)")
    p.add_argument("--quick", action="store_true", help="small sizes and short timings (for --device cpu)")
    p.add_argument("--budget-s", type=float, help="stop starting new measurements after this long (default 270; quick 90)")
    p.add_argument("--test-records", type=int, help="records of the agreement test (default 2048; quick 16)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    p.add_argument("--json", help="write the results as JSON here (e.g. $OUT/gpu.json)")
    args = p.parse_args(argv)

    q = args.quick
    sizes = sorted(int(s) for s in (args.sizes or ("4,8" if q else "1024,4096,16384")).split(","))
    budget = args.budget_s or (90.0 if q else 270.0)
    run = Run(args.json, budget)
    env = environment()
    run.details["environment"] = env
    run.details["args"] = vars(args)
    note("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))

    try:
        device = resolve_device(args.device)  # fails loudly when CUDA was asked for and is not there
    except Exception as e:
        run.errors.append({"section": "device", "error": f"{type(e).__name__}: {e}"})
        run.save()
        raise
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.init()
        props = torch.cuda.get_device_properties(device)
        run.details["device"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                                 "sm_count": props.multi_processor_count,
                                 "float32_matmul_precision": torch.get_float32_matmul_precision()}
    torch.manual_seed(0)

    # The model, one instance shared by the scorers.
    model, model_loaded = None, False
    if args.checkpoint:
        try:
            model, meta = checkpoint.load(args.checkpoint, device)
            source = f"checkpoint {args.checkpoint} (model version {meta['model_version']})"
            model_loaded = True
        except Exception as e:  # noqa: BLE001 - measure with random weights rather than nothing
            print(f"# ERROR loading {args.checkpoint} (random weights of --preset {args.preset} instead): "
                  f"{type(e).__name__}: {e}", flush=True)
            run.errors.append({"section": "checkpoint", "error": f"{type(e).__name__}: {e}"})
    if model is None:
        model = random_model(args.preset).to(device)
        meta = {"model_version": f"random-{args.preset}"}
        source = f"random weights, preset {args.preset}"
    standardizer = checkpoint.load_standardizer(args.checkpoint, meta) if args.checkpoint and model_loaded else None
    config = model.config
    scorers = {name: Scorer(model, meta, device, dtype, standardizer=standardizer) for name, dtype in DTYPES.items()}
    run.details["model"] = {"source": source, "parameters": sum(t.numel() for t in model.parameters()),
                            "modalities": [m.to_dict() for m in config.modalities], "hidden": config.hidden,
                            "norm_first": config.norm_first}
    note(f"model: {source}")

    pool = None
    with run.section("data") as ok:
        started = time.perf_counter()
        pool = synthetic_batch(config, 16 if q else 1024, missing_rate=0.3, seed=2)
        run.details["data"] = {"pool_records": len(pool), "missing_fraction": missing_fraction(pool),
                               "bytes_per_record": bytes_per_record(pool),
                               "generate_seconds": round(time.perf_counter() - started, 1)}
        run.emit("bytes_per_record", bytes_per_record(pool))
        run.emit("missing_fraction", missing_fraction(pool))
    if pool is None:
        run.save()
        return 1
    bpr = bytes_per_record(pool)

    flops = None
    with run.section("flops") as ok:
        run.emit("flagged_fraction", float(scorers["float32"].score(pool).key_missing.mean()))
        sample = pool.take(np.arange(min(8 if q else 64, len(pool))))
        counted = flop_counts(scorers["float32"], sample)  # buckets as the Scorer plans them on this device
        run.details["flops_per_record"] = counted
        for k, v in counted.items():
            run.emit(f"flops_per_record_{k}", v)
        run.emit("flops_spent_over_needed", counted["spent"] / counted["needed"])
        run.emit("flops_max_len_over_needed", counted["max_len"] / counted["needed"])
        flops = counted["spent"]

    rates: dict[str, float] = {}
    with run.section("matmul", needs_s=8) as ok:
        if ok:
            n = 1024 if q else 16384
            for name, dtype, allow in (("bfloat16", torch.bfloat16, False), ("float32", torch.float32, False),
                                       ("tf32", torch.float32, True)):
                try:
                    with tf32(allow):
                        rates[name] = matmul_tflops(n, dtype, device, 0.3 if q else 2.0)
                    run.emit(f"matmul_tflops_{name}", rates[name])
                except Exception as e:  # noqa: BLE001
                    print(f"# ERROR in matmul {name}: {type(e).__name__}: {e}", flush=True)
                    run.errors.append({"section": f"matmul_{name}", "error": f"{type(e).__name__}: {e}"})
            run.details["matmul_n"] = n

    copy: dict[str, float] = {}
    with run.section("copy", needs_s=5) as ok:
        if ok and not cuda:
            note("host-to-device copies need a CUDA device; skipped on the CPU")
        elif ok:
            nbytes = (64 << 20) if q else (1 << 30)
            for name, pinned in (("pinned", True), ("pageable", False)):
                try:
                    copy[name] = copy_gbps(nbytes, device, pinned, 0.3 if q else 1.5)
                    run.emit(f"h2d_gbps_{name}", copy[name])
                except Exception as e:  # noqa: BLE001
                    print(f"# ERROR in copy {name}: {type(e).__name__}: {e}", flush=True)
                    run.errors.append({"section": f"copy_{name}", "error": f"{type(e).__name__}: {e}"})
            if "pinned" in copy and "pageable" in copy:
                run.emit("h2d_pinned_over_pageable", copy["pinned"] / copy["pageable"])
            # The scorer's own input path at the largest batch size: numpy -> reused page-locked buffers -> device.
            big = tile(pool, max(sizes))
            inputs = DeviceInputs(device)
            times = time_call(lambda: inputs.put(big, config.modality_names), warmup=1, repeats=3,
                              min_seconds=0.3 if q else 1.5, device=device)
            copy["scorer_inputs"] = bytes_per_record(big) * len(big) / median(times) / 1e9
            run.emit(f"h2d_gbps_scorer_inputs_b{len(big)}", copy["scorer_inputs"])
            run.details["copy_bytes"] = nbytes
            del big, inputs

    with run.section("agreement", needs_s=15) as ok:
        if ok:
            test = synthetic_batch(config, args.test_records or (16 if q else 2048), missing_rate=0.3, seed=3)
            chunk = 512

            def scored(fn):
                parts = [fn(test.take(np.arange(i, min(i + chunk, len(test))))) for i in range(0, len(test), chunk)]
                return {f: np.concatenate([getattr(r, f) for r in parts])
                        for f in ("label_index", "key_missing", "probabilities")}

            def with_tf32(b):
                with tf32():
                    return scorers["float32"].score(b)

            f32 = scored(scorers["float32"].score)
            agreement = {"records": len(test), "model": source,
                         "accuracy_float32": float((f32["label_index"] == test.labels).mean()),
                         "flagged_fraction_float32": float(f32["key_missing"].mean())}
            for name, fn in (("bfloat16", scorers["bfloat16"].score), ("tf32", with_tf32)):
                other = scored(fn)
                agreement[name] = {
                    "label_agreement": float((f32["label_index"] == other["label_index"]).mean()),
                    "key_missing_agreement": float((f32["key_missing"] == other["key_missing"]).mean()),
                    "max_abs_probability_difference": float(np.abs(f32["probabilities"] - other["probabilities"]).max()),
                    "accuracy": float((other["label_index"] == test.labels).mean())}
                for k, v in agreement[name].items():
                    run.emit(f"{name}_vs_fp32_{k}", v)
            b = agreement["bfloat16"]
            ok_default = b["label_agreement"] >= LABEL_AGREEMENT_GOAL and b["key_missing_agreement"] >= FLAG_AGREEMENT_GOAL
            agreement["bf16_default_ok"] = ok_default
            run.details["agreement"] = agreement
            run.emit("bf16_default_ok", int(ok_default))
            del test

    # The ceilings in records/s: what the measured matmul rate and copy rate would allow at most.
    for n in ("float32", "tf32", "bfloat16"):
        if flops and n in rates:
            run.emit(f"compute_ceiling_records_per_s_{n}", rates[n] * 1e12 / flops)
    for n in ("pinned", "scorer_inputs"):
        if n in copy:
            run.emit(f"transfer_ceiling_records_per_s_{n}", copy[n] * 1e9 / bpr)

    throughput: dict = {}
    run.details["throughput"] = throughput
    names = config.modality_names
    per_record_s = 0.0  # of the previous (smaller) batch size: a conservative estimate of the next one's cost
    lo_rounds = 2 if q else 3
    for size in sizes:
        calls = 7 * (lo_rounds + 1) + 2  # 5 Scorer variants and 2 model-only ones x (warm-up + rounds), plus probes
        with run.section(f"throughput_b{size}", needs_s=max(2.0 if q else 10.0, calls * per_record_s * size)) as ok:
            if not ok:
                continue
            batch = tile(pool, size)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            fns = variants(scorers, batch)
            one = time_call(fns["old_float32"], warmup=1, repeats=1, device=device)[0]  # the slowest
            per_record_s = one / size
            rounds = max(lo_rounds, min(10, math.ceil((0.5 if q else 3.0) / max(one, 1e-6))))
            times = interleave(fns, rounds=rounds, warmup=1, device=device)
            # The model alone: the batch's buckets already on the device, outputs left there.
            inputs = DeviceInputs(device)
            features, lengths = inputs.put(batch, names)
            plan = scorers["float32"].plan(np.stack([batch.lengths[n] for n in names], axis=1))
            parts = [inputs.bucket(features, lengths, b) for b in plan]

            def forward(dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                            enabled=dtype is not None):
                    return [model(f, l, mode="flagged").logits for f, l in parts]

            model_times = interleave({n: (lambda d=d: forward(d)) for n, d in DTYPES.items()}, rounds=rounds, warmup=1,
                                     device=device)
            fig = {"rounds": rounds, "buckets": len(plan), "bucket_rows": [len(b.rows) for b in plan]}
            for n in fns:
                rps = size / median(times[n])
                fig[n] = {"records_per_s": rps, "seconds": times[n], "spread": spread(times[n])}
                run.emit(f"gpu_records_per_s_{n}_b{size}", rps)
                rate = rates.get(n.replace("old_", ""))
                if flops and rate:
                    fig[n]["compute_fraction"] = rps * flops / (rate * 1e12)
                if "pinned" in copy:
                    fig[n]["transfer_fraction"] = rps * bpr / (copy["pinned"] * 1e9)
            for n in DTYPES:
                mrps = size / median(model_times[n])
                fig[n]["model_only_records_per_s"] = mrps
                run.emit(f"gpu_model_only_records_per_s_{n}_b{size}", mrps)
            for n in ("float32", "bfloat16"):
                fig[f"new_over_old_{n}"] = median([o / x for o, x in zip(times[f"old_{n}"], times[n])])
                run.emit(f"new_over_old_{n}_b{size}", fig[f"new_over_old_{n}"])
            fig["bf16_over_fp32_speedup"] = median([a / b for a, b in zip(times["float32"], times["bfloat16"])])
            fig["tf32_over_fp32_speedup"] = median([a / b for a, b in zip(times["float32"], times["tf32"])])
            run.emit(f"bf16_speedup_b{size}", fig["bf16_over_fp32_speedup"])
            run.emit(f"tf32_speedup_b{size}", fig["tf32_over_fp32_speedup"])
            if cuda:
                fig["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                run.emit(f"peak_memory_gib_b{size}", fig["peak_memory_gib"])
            throughput[size] = fig
            del batch, features, lengths, parts, inputs

    with run.section("compile", needs_s=60 if not q else 30) as ok:
        if ok and (args.no_compile or not cuda):
            note("torch.compile skipped (--no-compile, or not on CUDA)")
        elif ok:
            size = max(s for s in throughput) if throughput else sizes[0]
            batch = tile(pool, size)
            compiled = Scorer(torch.compile(model, dynamic=True), meta, device, torch.bfloat16, standardizer=standardizer)
            started = time.perf_counter()
            compiled.score(batch)  # compiles (every bucket shape reuses the dynamic graph)
            run.emit("compile_seconds", time.perf_counter() - started)
            times = interleave({"eager": lambda: scorers["bfloat16"].score(batch), "compiled": lambda: compiled.score(batch)},
                               rounds=3, warmup=1, device=device)
            run.emit(f"compiled_over_eager_bfloat16_b{size}", median([a / b for a, b in zip(times["eager"], times["compiled"])]))
            run.emit(f"gpu_records_per_s_compiled_bfloat16_b{size}", size / median(times["compiled"]))

    # The headline: the best records/s per variant, and the default path's against the old one.
    for n in ("float32", "tf32", "bfloat16", "old_float32", "old_bfloat16"):
        best = [(f[n]["records_per_s"], s) for s, f in throughput.items() if n in f]
        if best:
            rps, s = max(best)
            run.emit(f"gpu_best_records_per_s_{n}", rps)
            run.emit(f"gpu_best_batch_size_{n}", s)
    run.emit("elapsed_s", round(time.perf_counter() - run.started, 1))
    run.emit("errors", len(run.errors))
    run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
