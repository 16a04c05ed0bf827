#!/usr/bin/env bash
# `make demo`: everything from nothing, on the embedded default (small preset, synthetic data), on 2 CPU cores in
# a few minutes: synthesise records (plus a file of deliberately bad ones and a file that is not Parquet), train a
# small EMMR model with `emmr train`, score with the batch job on the DirectRunner, and summarise what came out.
# Run with .venv/bin on PATH (the Makefile does).
set -euo pipefail
out=${1:-runs/demo}
rm -rf "$out" && mkdir -p "$out"
started=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - started )) s so far)"; }

echo "== 1. synthetic records (small preset) -> $out/data"
emmr synth --out "$out/data/train" --records 1500 --seed 1 --preset small --missing-rate 0.0
emmr synth --out "$out/data/score" --records 1000 --seed 2 --preset small --missing-rate 0.3
python - "$out/data/score" <<'EOF'
import sys
from beam_pipeline.samples import write_bad_records
from emmr.config import preset
config = preset("small")
expected = write_bad_records(sys.argv[1], config.modalities, config.num_classes)
print("   plus deliberately bad records:", ", ".join(
    f"{k or '(empty id)'} -> {'/'.join(str(v) for v in kinds)}" for k, kinds in expected.items()))
EOF
stamp

echo "== 2. train a small EMMR model (few epochs: a demo, not a benchmark) -> $out/model"
emmr train --data "$out/data/train" --out "$out/model" --preset small --epochs 12 --teacher-epochs 6 \
    --batch-size 64 --no-progress
stamp

echo "== 3. score with the batch job on the DirectRunner -> $out/predictions, $out/dead_letters"
emmr-score --runner=DirectRunner --input "$out/data/score/*.parquet" --model "$out/model" \
    --output "$out/predictions/part" --dead_letter "$out/dead_letters/part" --batch_size 256 \
    --job_name emmr-demo --summary_json "$out/summary.json"
stamp

echo "== 4. what the output files say"
python - "$out" <<'EOF'
import glob, json, sys
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
out = sys.argv[1]
pred = pq.read_table(glob.glob(f"{out}/predictions/part-*.parquet"))
dead = pq.read_table(glob.glob(f"{out}/dead_letters/part-*.parquet"))
summary = json.load(open(f"{out}/summary.json"))
print(f"   records in {summary['records_in']} = {pred.num_rows} predictions + {dead.num_rows} dead letters "
      f"({'conserved' if summary['records_in'] == pred.num_rows + dead.num_rows else 'NOT CONSERVED'})")
for row in dead.select(["id", "error_kind", "source"]).to_pylist():
    print(f"   dead letter  {row['error_kind']:<20} {str(row['id']):<18} {row['source']}")
flagged = pred.filter(pred.column("key_missing"))
counts = dict(zip(*[c.to_pylist() for c in pc.value_counts(flagged.column("key_modality")).flatten()])) if flagged.num_rows else {}
missing = pc.list_value_length(pred.column("missing")).to_numpy() > 0
print(f"   records missing a modality: {int(missing.sum())}; flagged key-missing: {flagged.num_rows} "
      f"(by modality: {', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'})")
# The synthetic data knows which missing modality was key: compare the flags with that truth.
truth = pq.read_table(glob.glob(f"{out}/data/score/part-*.parquet"))
truth_key = {}
for rid, dropped, *keys in zip(*[truth.column(c).to_pylist() for c in
                                 ["id", "dropped"] + [f"key_{m}" for m in ("visual", "acoustic", "text")]]):
    if dropped:
        truth_key[rid] = dict(zip(("visual", "acoustic", "text"), keys))[dropped]
ids, flags = pred.column("id").to_pylist(), pred.column("key_missing").to_pylist()
pairs = [(flags[i], truth_key[r]) for i, r in enumerate(ids) if r in truth_key]
if pairs:
    f, t = np.array(pairs).T
    print(f"   against the planted truth: {int((f & t).sum())} of {int(t.sum())} key-missing records flagged, "
          f"{int((f & ~t).sum())} of {int((~t).sum())} others flagged (by a 12-epoch demo model)")
print(f"   predictions by label: {summary['predictions_by_label']}")
gate = json.load(open(f"{out}/model/checkpoint.json"))["metrics"].get("ensemble")
if gate:
    scores = ", ".join(f"{k} {gate['ensemble'][k]:.4f} with it, {v:.4f} without" for k, v in gate["backbone"].items())
    print(f"   the ensemble: {'kept' if gate['kept'] else 'not kept, the model is its backbone (TF) alone'} "
          f"(validation {scores}; docs/model.md, training step 4)")
print(f"   outputs: {out}/predictions/part-*.parquet (prediction v1), {out}/dead_letters/part-*.parquet "
      f"(dead letter v1), {out}/summary.json")
EOF
echo "== done in $(( $(date +%s) - started )) s: outputs under $out"
