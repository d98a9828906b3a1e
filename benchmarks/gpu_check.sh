#!/usr/bin/env bash
# One prepared GPU session (issue 9): the cuDNN fast paths checked against the dense forms, then the GPU targets
# timed. Run from the repository root on a machine with a CUDA build of jax (the device image has one):
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else runs/gpu_check
#
# Writes tests.log, bench_t512.jsonl (+ .png, .md) and bench_t2048.jsonl into OUT_DIR. About 6-8 minutes on an
# H100: the tests ~1 min, T 512 (mosaic + GPT-2, fast + plain, 12 L / 768) ~3 min, T 2048 ~2 min.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export JAX_PLATFORMS=cuda XLA_FLAGS="${XLA_FLAGS:-}" XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PY" - <<'PY' || { echo "gpu_check: no GPU visible to jax" >&2; exit 2; }
import jax
print("jax", jax.__version__, jax.devices())
assert jax.default_backend() == "gpu"
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

echo "== correctness: tests/test_gpu.py tests/test_fast_paths.py"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_fast_paths.py 2>&1 | tee "$OUT_DIR/tests.log"
status=${PIPESTATUS[0]}

echo "== T 512, 12 layers, 768 (the issue's 45 % MFU and 1.1x GPT-2 targets)"
"$PY" -m mosaic_jax.tools.bench --size=gpt2-small --seq=512 --batch=8 --arch=mosaic,gpt2 --dtype=bfloat16 \
  --impl=fast,plain --rounds=20 --markdown --out="$OUT_DIR/bench_t512.jsonl" --plot="$OUT_DIR/bench_t512.png" \
  | tee "$OUT_DIR/bench_t512.md" || status=1

echo "== T 2048, batch 2 (memory against the reference's 9.0 GB on a GV100)"
"$PY" -m mosaic_jax.tools.bench --size=gpt2-small --seq=2048 --batch=2 --arch=mosaic --dtype=bfloat16 \
  --impl=fast,plain --rounds=10 --markdown --out="$OUT_DIR/bench_t2048.jsonl" | tee "$OUT_DIR/bench_t2048.md" || status=1
exit "$status"
