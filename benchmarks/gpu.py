"""GPU benchmark of the EMMR scorer, in one run of at most ~5 minutes on a CUDA machine.

Measures, for the paper preset (random weights, or the checkpoint given with --checkpoint):
  * records/s of Scorer.score (numpy in -> numpy out, the copies included) in float32 and bfloat16 autocast
    at several batch sizes, the two dtypes interleaved; and of the model alone (inputs already on the device);
  * host-to-device copy rate from pinned and from pageable memory (GB/s), and of the scorer's own input path
    (emmr.tensors.model_inputs: pin the numpy arrays, then a non-blocking copy);
  * the model's FLOPs per record (counted analytically from the config, at the data's flag rate; torch's
    flop counter on one forward as a cross-check), and the measured matrix rate (a 16384^3 bf16 and fp32
    matmul, TFLOP/s; fp32 at torch's default precision, as the model runs);
  * the fraction of the compute ceiling (records/s x FLOPs/record / matmul rate) and of the transfer ceiling
    (records/s x bytes/record / pinned copy rate) that each configuration reaches;
  * whether bfloat16 predictions agree with float32 on a synthetic test set (fraction of equal labels).

Every measurement is guarded: one that fails prints its error and the others go on. Results are printed as
`name: value` lines and written as JSON (after every section, so a run cut short keeps what it had).
Only torch, numpy, pyarrow, safetensors and this repository (PYTHONPATH=.) are needed; no apache_beam.

  PYTHONPATH=. python benchmarks/gpu.py --json $OUT/gpu.json [--checkpoint DIR]
  PYTHONPATH=. python benchmarks/gpu.py --device cpu --quick --json /tmp/gpu-cpu.json   # a smoke test, < 1 min
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

from benchmarks.common import (bytes_per_record, emit, environment, interleave, median, missing_fraction, note,  # noqa: E402
                               random_model, spread, sync, synthetic_batch, tile, time_call, write_json)
from emmr import checkpoint  # noqa: E402
from emmr.config import ModelConfig, preset  # noqa: E402
from emmr.scorer import Scorer, resolve_device  # noqa: E402
from emmr.tensors import model_inputs  # noqa: E402

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


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


# ---------------------------------------------------------------------------------------------- FLOPs


def analytic_flops(config: ModelConfig) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of matmuls and attention per record; padded lengths (the model computes
    every slot). -> {"backbone": encoders + first member + heads, "extra": the other members + ensemble}."""
    h, c, m = config.hidden, config.num_classes, len(config.modalities)
    t = sum(s.max_len for s in config.modalities)

    def attn(lq: int, lk: int) -> float:  # q, k, v, out projections + scores + weighted sum
        return 2 * (2 * lq * h * h + 2 * lk * h * h) + 2 * 2 * lq * lk * h

    def mlp(sizes) -> float:
        return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def classifier(d_in: int) -> float:
        return 2 * (d_in * h + h * c)

    enc = sum(2 * s.max_len * s.dim * h + attn(s.max_len, s.max_len) for s in config.modalities)
    ffn = mlp((h, config.ffn, h)) * t
    ae = t * (mlp((h, *config.ae_dims)) + mlp((*config.ae_dims[::-1], h)))
    # each member reconstructs (from the observed slots) and represents (the recovered input): two passes
    members = {
        "tf": (attn(t, t) + ffn + 2 * attn(t, t) + ffn) + (attn(t, t) + ffn),
        "ae": 2 * ae,
        "mmin": 2 * config.mmin_blocks * ae + t * 2 * config.mmin_blocks * config.ae_dims[-1] * h,
    }
    without = [t - s.max_len for s in config.modalities]  # the slots each pair head reads
    heads = attn(t, t) + classifier(m * h) + sum(attn(w, w) + classifier((m - 1) * h) for w in without)
    ensemble = len(config.members) * 2 * (2 * c) * (2 * c) + 2 * (2 * c) * c
    first, others = config.members[0], config.members[1:]
    return {"backbone": enc + members[first] + heads,
            "extra": sum(members[n] + heads for n in others) + (ensemble if others else 0.0)}


def counted_flops(model, batch, device) -> dict[str, float]:
    """FLOPs per record counted by torch.utils.flop_counter on one forward: with every member on every row
    ("all") and the backbone only (a forward over records with nothing missing: nothing is flagged).
    Grad mode is on so that PyTorch's fused inference kernels (which the counter may not see) stay off."""
    from torch.utils.flop_counter import FlopCounterMode

    names = model.config.modality_names
    complete = batch.drop(np.zeros((len(batch), len(names)), dtype=bool))
    for n in names:
        complete.lengths[n] = np.maximum(complete.lengths[n], 1)  # every modality present
    out = {}
    for label, b, mode in (("all", batch, "all"), ("backbone", complete, "flagged")):
        features, lengths = model_inputs(b, names, device)
        counter = FlopCounterMode(display=False)
        with torch.enable_grad(), counter:
            res = model(features, lengths, mode=mode)
        if label == "backbone":
            assert not bool(res.ensemble_used.any()), "a record with nothing missing was flagged"
        out[label] = counter.get_total_flops() / len(b)
    return out


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
    p.add_argument("--sizes", help="batch sizes, comma-separated (default 64,256,1024,4096; quick: 2,4)")
    p.add_argument("--quick", action="store_true", help="small sizes and short timings (for --device cpu)")
    p.add_argument("--budget-s", type=float, help="stop starting new measurements after this long (default 270; quick 50)")
    p.add_argument("--test-records", type=int, help="records of the bf16 agreement test (default 1024; quick 16)")
    p.add_argument("--json", help="write the results as JSON here (e.g. $OUT/gpu.json)")
    args = p.parse_args(argv)

    q = args.quick
    sizes = sorted(int(s) for s in (args.sizes or ("2,4" if q else "64,256,1024,4096")).split(","))
    budget = args.budget_s or (50.0 if q else 270.0)
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

    # The model, one instance shared by the float32 and bfloat16 scorers.
    model = None
    if args.checkpoint:
        try:
            model, meta = checkpoint.load(args.checkpoint, device)
            source = f"checkpoint {args.checkpoint} (model version {meta['model_version']})"
        except Exception as e:  # noqa: BLE001 - measure with random weights rather than nothing
            print(f"# ERROR loading {args.checkpoint} (random weights of --preset {args.preset} instead): "
                  f"{type(e).__name__}: {e}", flush=True)
            run.errors.append({"section": "checkpoint", "error": f"{type(e).__name__}: {e}"})
    if model is None:
        model = random_model(args.preset).to(device)
        meta = {"model_version": f"random-{args.preset}"}
        source = f"random weights, preset {args.preset}"
    config = model.config
    scorers = {name: Scorer(model, meta, device, dtype) for name, dtype in DTYPES.items()}
    run.details["model"] = {"source": source, "parameters": sum(t.numel() for t in model.parameters()),
                            "modalities": [m.to_dict() for m in config.modalities], "hidden": config.hidden}
    note(f"model: {source}")

    pool = None
    with run.section("data") as ok:
        started = time.perf_counter()
        pool = synthetic_batch(config, 16 if q else 512, missing_rate=0.3, seed=2)
        run.details["data"] = {"pool_records": len(pool), "missing_fraction": missing_fraction(pool),
                               "bytes_per_record": bytes_per_record(pool),
                               "generate_seconds": round(time.perf_counter() - started, 1)}
        run.emit("bytes_per_record", bytes_per_record(pool))
        run.emit("missing_fraction", missing_fraction(pool))
    if pool is None:
        run.save()
        return 1
    bpr = bytes_per_record(pool)

    flagged = float("nan")
    with run.section("flops") as ok:
        scores = scorers["float32"].score(pool)
        flagged = float(scores.key_missing.mean())
        run.emit("flagged_fraction", flagged)
        a = analytic_flops(config)
        run.details["flops_analytic"] = a
        run.emit("flops_per_record_analytic_backbone", a["backbone"])
        run.emit("flops_per_record_analytic_all_members", a["backbone"] + a["extra"])
        base, extra = a["backbone"], a["extra"]
        # The analytic count is the one used: torch's counter has no formula for the CPU attention kernel
        # (it then misses the attention scores); on CUDA the two should agree within a few per cent.
        run.details["flops_per_record"] = base + flagged * extra
        run.emit("flops_per_record", base + flagged * extra)  # at this data's flag rate
        try:
            c = counted_flops(model, pool.take(np.arange(min(8, len(pool)))), device)
            run.details["flops_counted"] = c
            run.emit("flops_per_record_counted_backbone", c["backbone"])
            run.emit("flops_per_record_counted_all_members", c["all"])
            run.emit("flops_counted_over_analytic_all_members", c["all"] / (a["backbone"] + a["extra"]))
        except Exception as e:  # noqa: BLE001 - the analytic count stands
            print(f"# ERROR in flop counter: {type(e).__name__}: {e}", flush=True)
            run.errors.append({"section": "flop_counter", "error": f"{type(e).__name__}: {e}"})

    rates: dict[str, float] = {}
    with run.section("matmul", needs_s=5) as ok:
        if ok:
            n = 1024 if q else 16384
            for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
                try:
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
            # The scorer's own input path at the largest batch size: numpy -> pin_memory() -> non-blocking copy.
            big = tile(pool, max(sizes))
            names = config.modality_names
            times = time_call(lambda: model_inputs(big, names, device), warmup=1, repeats=3,
                              min_seconds=0.3 if q else 1.5, device=device)
            copy["scorer_inputs"] = bytes_per_record(big) * len(big) / median(times) / 1e9
            run.emit(f"h2d_gbps_scorer_inputs_b{len(big)}", copy["scorer_inputs"])
            run.details["copy_bytes"] = nbytes
            del big

    with run.section("bf16_agreement", needs_s=10) as ok:
        if ok:
            test = synthetic_batch(config, args.test_records or (16 if q else 1024), missing_rate=0.3, seed=3)
            chunk = 256
            out = {name: [s.score(test.take(np.arange(i, min(i + chunk, len(test)))))
                          for i in range(0, len(test), chunk)] for name, s in scorers.items()}
            cat = {name: {f: np.concatenate([getattr(r, f) for r in rs]) for f in ("label_index", "key_missing", "probabilities")}
                   for name, rs in out.items()}
            f32, b16 = cat["float32"], cat["bfloat16"]
            agree = float((f32["label_index"] == b16["label_index"]).mean())
            run.details["bf16_agreement"] = {
                "records": len(test), "model": source,
                "label_agreement": agree,
                "key_missing_agreement": float((f32["key_missing"] == b16["key_missing"]).mean()),
                "max_abs_probability_difference": float(np.abs(f32["probabilities"] - b16["probabilities"]).max()),
                "accuracy_float32": float((f32["label_index"] == test.labels).mean()),
                "accuracy_bfloat16": float((b16["label_index"] == test.labels).mean()),
                "flagged_fraction_float32": float(f32["key_missing"].mean()),
            }
            for k, v in run.details["bf16_agreement"].items():
                if k not in ("records", "model"):
                    run.emit(f"bf16_vs_fp32_{k}", v)
            del test, out, cat

    # The ceilings in records/s: what the measured matmul rate and copy rate would allow at most.
    flops = run.details.get("flops_per_record")
    for n in DTYPES:
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
        calls = 4 * (lo_rounds + 1) + 2  # 2 paths x 2 dtypes x (warm-up + rounds), plus probes
        with run.section(f"throughput_b{size}", needs_s=max(2.0 if q else 10.0, calls * per_record_s * size)) as ok:
            if not ok:
                continue
            batch = tile(pool, size)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            # Scorer.score, float32 and bfloat16 interleaved.
            one = time_call(lambda: scorers["float32"].score(batch), warmup=1, repeats=1, device=device)[0]
            per_record_s = one / size
            rounds = rounds_for(one, 0.3 if q else 2.0, lo=lo_rounds)
            times = interleave({n: (lambda s=s: s.score(batch)) for n, s in scorers.items()}, rounds=rounds, warmup=1,
                               device=device)
            # The model alone: inputs already on the device, outputs left there.
            features, lengths = model_inputs(batch, names, device)

            def forward(dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                            enabled=dtype is not None):
                    return model(features, lengths, mode="flagged").logits

            model_times = interleave({n: (lambda d=d: forward(d)) for n, d in DTYPES.items()}, rounds=rounds, warmup=1,
                                     device=device)
            fig = {"rounds": rounds}
            for n in DTYPES:
                rps, mrps = size / median(times[n]), size / median(model_times[n])
                fig[n] = {"records_per_s": rps, "model_only_records_per_s": mrps, "seconds": times[n],
                          "model_only_seconds": model_times[n], "spread": spread(times[n])}
                run.emit(f"gpu_records_per_s_{n}_b{size}", rps)
                run.emit(f"gpu_model_only_records_per_s_{n}_b{size}", mrps)
                if flops and n in rates:
                    fig[n]["compute_fraction"] = rps * flops / (rates[n] * 1e12)
                    fig[n]["model_only_compute_fraction"] = mrps * flops / (rates[n] * 1e12)
                    run.emit(f"compute_ceiling_fraction_{n}_b{size}", fig[n]["compute_fraction"])
                    run.emit(f"model_only_compute_ceiling_fraction_{n}_b{size}", fig[n]["model_only_compute_fraction"])
                if "pinned" in copy:
                    fig[n]["transfer_fraction"] = rps * bpr / (copy["pinned"] * 1e9)
                    run.emit(f"transfer_ceiling_fraction_{n}_b{size}", fig[n]["transfer_fraction"])
                if "scorer_inputs" in copy:
                    fig[n]["scorer_input_path_fraction"] = rps * bpr / (copy["scorer_inputs"] * 1e9)
                    run.emit(f"scorer_input_path_fraction_{n}_b{size}", fig[n]["scorer_input_path_fraction"])
            fig["bf16_over_fp32_speedup"] = median([a / b for a, b in zip(times["float32"], times["bfloat16"])])
            run.emit(f"bf16_speedup_b{size}", fig["bf16_over_fp32_speedup"])
            if cuda:
                fig["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                run.emit(f"peak_memory_gib_b{size}", fig["peak_memory_gib"])
            throughput[size] = fig
            del batch, features, lengths

    # The headline: the best records/s per dtype.
    for n in DTYPES:
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
