#!/usr/bin/env bash
# Train the tiny_cpu memory mosaic on the TinyStories sample, from a fresh clone, and print generated text.
#
#   scripts/quickstart.sh [--input=FILES] [--workdir=DIR] [--python=PY] [-- --config.train.steps=100 ...]
#
# 1. Python: --python=PY (or $PYTHON) is used as is; otherwise a venv in .venv is created and requirements.txt
#    installed into it (once; a stamp records the requirements it was built from).
# 2. Data, in this order: --input (comma-separated text/JSONL files or folders); ../shared/data/tinystories
#    beside the clone; otherwise TinyStories-valid.txt from the Hugging Face hub (online only). It is prepared
#    once into runs/data/tinystories_sp4k (sentencepiece, 4096 pieces; runs/ is git-ignored).
# 3. python -m mosaic_jax.train --config=tiny_cpu; re-running resumes / is a no-op.
# Arguments after `--` go to the trainer (e.g. `-- --config.train.steps=100`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
INPUT=""
WORKDIR="runs/tiny_cpu"
PY="${PYTHON:-}"
DATA="runs/data/tinystories_sp4k"
HF_URL="https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --input=*) INPUT="${1#*=}"; DATA="runs/data/custom_$(printf %s "$INPUT" | sha256sum | cut -c1-8)_sp4k" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --data=*) DATA="${1#*=}" ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "quickstart: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
START=$(date +%s)

# ---- 1. Python environment --------------------------------------------------------------------------------
if [[ -z "$PY" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    echo "== creating .venv"
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
  STAMP=".venv/.mosaic_jax-requirements.sha256"
  WANT=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "== installing requirements.txt into .venv"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r requirements.txt
    echo "$WANT" > "$STAMP"
  fi
fi
"$PY" -c "import jax, flax, optax, orbax.checkpoint, grain, sentencepiece" \
  || { echo "quickstart: error: $PY lacks the packages of requirements.txt" >&2; exit 1; }

# ---- 2. Data ----------------------------------------------------------------------------------------------
PREP=(--out="$DATA" --tokenizer=sp:4096 --progress=false)
SHARED_TS="$REPO/../shared/data/tinystories"
if [[ -n "$INPUT" ]]; then
  echo "== preparing --input=$INPUT"
  PREP+=(--input="$INPUT")
elif [[ -d "$SHARED_TS" ]]; then
  echo "== preparing the TinyStories sample in ../shared/data/tinystories"
  PREP+=(--input="$SHARED_TS/train_v1_prefix_a.txt,$SHARED_TS/train_v2gpt4_prefix.txt"
         --validation_input="$SHARED_TS/valid_v1_prefix.txt")
else
  mkdir -p runs/data/download
  if [[ ! -s runs/data/download/TinyStories-valid.txt ]]; then
    echo "== downloading TinyStories-valid.txt (19 MB) from the Hugging Face hub"
    if ! "$PY" - "$HF_URL" runs/data/download/TinyStories-valid.txt <<'EOF'
import sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=30) as r, open(out + ".part", "wb") as f:
        f.write(r.read())
except OSError as e:
    sys.exit(f"download failed: {e}")
import os; os.replace(out + ".part", out)
EOF
    then
      echo "quickstart: error: no TinyStories data: ../shared/data/tinystories is absent and the Hugging Face hub" \
           "is unreachable (offline?). Pass --input=FILE[,FILE...] (plain-text stories separated by blank lines" \
           "or <|endoftext|>, or JSONL with a \"text\" field)." >&2
      exit 1
    fi
  fi
  PREP+=(--input=runs/data/download/TinyStories-valid.txt --val_fraction=0.05)
fi
"$PY" -m mosaic_jax.prepare_data "${PREP[@]}"

# ---- 3. Train (prints a falling loss, then generated text) ------------------------------------------------
echo "== training tiny_cpu in $WORKDIR"
"$PY" -m mosaic_jax.train --config=tiny_cpu --workdir="$WORKDIR" \
  --config.data.path="$DATA" --config.train.compilation_cache_dir="$REPO/runs/.jax_cache" "${EXTRA[@]}"
echo "== done in $(( $(date +%s) - START )) s (metrics: $WORKDIR/metrics.jsonl, TensorBoard: $WORKDIR/tensorboard)"
