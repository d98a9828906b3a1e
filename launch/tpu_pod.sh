#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single host or pod): create or reuse the slice, copy this checkout to every
# worker, install jax[tpu] and the requirements there, run the same training command on all workers, stream
# the logs, optionally delete the slice. mosaic_jax starts jax.distributed itself (auto-detected on TPU VMs).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name=NAME --zone=ZONE [options] [--] TRAIN_FLAGS...

Steps (each one a gcloud command; --dry_run prints them all and runs nothing):
  1. create the TPU VM slice, unless one called NAME exists (then it is reused)
  2. copy this checkout (git-tracked and untracked-but-not-ignored files) to ~/mosaic_jax on every worker
  3. on every worker: a virtualenv ~/mosaic_venv with "jax[tpu]==<jax version of requirements.txt>" and requirements.txt
  4. on every worker (--worker=all): cd ~/mosaic_jax && python -m mosaic_jax.train TRAIN_FLAGS, logs streamed here
     and kept in ~/mosaic_train.log on each worker
  5. with --delete: delete the slice afterwards (also when training failed)

Options:
  --name=NAME                TPU VM name (required)
  --zone=ZONE                e.g. us-central2-b (required)
  --accelerator-type=TYPE    e.g. v4-32, v5litepod-16, v6e-8 (default v4-8; only used when creating)
  --version=IMAGE            TPU VM software version (default tpu-ubuntu2204-base)
  --project=PROJECT          gcloud project (default: gcloud's configured one)
  --spot                     create a Spot slice (preemptible; re-run this script to resume from checkpoints)
  --skip-setup               do not copy the code or install packages (already done on this slice)
  --delete                   delete the slice when the run ends
  --env=KEY=VALUE            exported on every worker before training (repeatable), e.g. --env=LIBTPU_INIT_ARGS=...
  --dry_run (or --dry-run)   print the commands, run nothing
  -h, --help                 this help

TRAIN_FLAGS must give a --workdir that every worker can write and read (a shared filesystem such as a Filestore
or gcsfuse mount): Orbax writes each worker's shards there and process 0 writes metrics. Example (v4-32 = 16
chips on 4 hosts, pure FSDP):
  launch/tpu_pod.sh --name=mm-v4 --zone=us-central2-b --accelerator-type=v4-32 -- \
    --config=babistories_mm --workdir=/mnt/shared/runs/mm --config.mesh.fsdp=16
EOF
}

name=""
zone=""
accelerator="v4-8"
version="tpu-ubuntu2204-base"
project=""
spot=0
skip_setup=0
delete=0
dry_run=0
envs=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}"; shift ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --accelerator-type=*) accelerator="${1#*=}"; shift ;;
    --version=*) version="${1#*=}"; shift ;;
    --project=*) project="${1#*=}"; shift ;;
    --env=*) envs+=("${1#*=}"); shift ;;
    --spot) spot=1; shift ;;
    --skip-setup) skip_setup=1; shift ;;
    --delete) delete=1; shift ;;
    --dry_run|--dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) break ;;
    *) echo "tpu_pod.sh: unexpected argument '$1' (training flags go after --; see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --name and --zone are required (see --help)" >&2
  exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: no training flags given (e.g. -- --config=babistories_mm --workdir=...)" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "${repo_root}/requirements.txt" | head -n 1)"
jax_version="${jax_version:-0.10.2}"

tpu=(gcloud compute tpus tpu-vm)
where=("--zone=${zone}")
if [[ -n "$project" ]]; then
  where+=("--project=${project}")
fi

quote() {   # a command line as one would type it: safe words bare, others in single quotes
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="${word} "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

run() {   # print a command (to stdout); run it unless --dry_run
  echo "+ $(quote "$@")"
  if [[ "$dry_run" -eq 0 ]]; then
    "$@"
  fi
}

on_all_workers() {   # $1: a shell command line for every worker
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

# 1. create or reuse
create=("${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=${accelerator}" "--version=${version}")
if [[ "$spot" -eq 1 ]]; then
  create+=(--spot)
fi
if [[ "$dry_run" -eq 1 ]]; then
  echo "+ $(quote "${tpu[@]}" describe "$name" "${where[@]}") >/dev/null 2>&1 || \\"
  run "${create[@]}"
elif "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_pod: reusing the existing TPU VM ${name}" >&2
else
  run "${create[@]}"
fi

cleanup() {
  if [[ "$delete" -eq 1 ]]; then
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}
trap cleanup EXIT

# 2. copy the code, 3. install
if [[ "$skip_setup" -eq 0 ]]; then
  archive="${TMPDIR:-/tmp}/mosaic_jax_${name}.tar.gz"
  echo "+ $(quote git -C "$repo_root" ls-files -z --cached --others --exclude-standard) | $(quote tar -C "$repo_root" -czf "$archive" --null -T -)"
  if [[ "$dry_run" -eq 0 ]]; then
    git -C "$repo_root" ls-files -z --cached --others --exclude-standard \
      | tar -C "$repo_root" -czf "$archive" --null -T -
  fi
  run "${tpu[@]}" scp "$archive" "${name}:mosaic_jax.tar.gz" "${where[@]}" --worker=all
  on_all_workers "rm -rf ~/mosaic_jax && mkdir -p ~/mosaic_jax && tar -xzf ~/mosaic_jax.tar.gz -C ~/mosaic_jax"
  on_all_workers "set -e; python3 -m venv ~/mosaic_venv && . ~/mosaic_venv/bin/activate && \
pip install -q --upgrade pip && pip install -q -r ~/mosaic_jax/requirements.txt \"jax[tpu]==${jax_version}\" && \
pip install -q -e ~/mosaic_jax --no-deps"
fi

# 4. the same training command on every worker
exports=""
for kv in "${envs[@]+"${envs[@]}"}"; do
  exports+="export $(printf '%q' "$kv"); "
done
train="$(printf '%q ' python -m mosaic_jax.train "$@")"
on_all_workers "set -o pipefail; ${exports}cd ~/mosaic_jax && . ~/mosaic_venv/bin/activate && ${train% } 2>&1 | tee -a ~/mosaic_train.log"
