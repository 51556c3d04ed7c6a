#!/usr/bin/env bash
# The device check for a lent GPU machine (see DEVELOPERS notes): the engine's
# CUDA tests, then the engine benchmark on CUDA. Results land in $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -m pytest tests/engine/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.txt"
"$PY" scripts/bench_engine.py --device cuda --threads 4 --reps 3 2>&1 | tee "$OUT/bench-cuda.txt"
cp BENCHMARKS.md docs/bench_engine_cuda.png "$OUT/" 2>/dev/null || true
