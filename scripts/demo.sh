#!/usr/bin/env bash
# `make demo`: everything from nothing, on the embedded default (small preset, synthetic data).
set -euo pipefail
out=${1:-runs/demo}
rm -rf "$out" && mkdir -p "$out"
echo "== 1. synthetic records (small preset, 30 % missing one modality) -> $out/data"
emmr synth --out "$out/data/train" --records 2000 --seed 1 --preset small --missing-rate 0.0
emmr synth --out "$out/data/score" --records 1000 --seed 2 --preset small --missing-rate 0.3
echo "== done: outputs under $out"
