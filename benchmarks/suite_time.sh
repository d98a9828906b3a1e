#!/usr/bin/env bash
# CPU seconds (user + sys, this process and its children) of test files or test ids, one pytest process each,
# with the load average beside every figure: on a shared machine wall time is noise, CPU time much less so.
#
#   bash benchmarks/suite_time.sh tests/test_bench.py tests/test_aot.py::test_parse_topology ...
#   bash benchmarks/suite_time.sh --suite        # the CI command (-n 2) once, with its --durations=40 table
#
# Run from any folder; it runs in the repository root with PYTHONPATH set to it, so a worktree measures its own
# code. Prints one line per target: "cpu S (user U sys Y) wall W load[1 5 15] <pytest summary> :: <target>".
# Expects the test environment to be active (the venv of requirements-dev.txt); PYTHON overrides the interpreter.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD"
if [ "$#" -eq 0 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
log="$(mktemp)"
times="$(mktemp)"
trap 'rm -f "$log" "$times"' EXIT
status=0

measure() {   # measure LABEL ARGS...: one pytest run, one line
  local label="$1" load
  shift
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "%U %S %e" -o "$times" "$PY" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1 || status=1
  # the last line: time puts "Command exited with non-zero status N" before the figures on a failure
  tail -n 1 "$times" | awk -v load="$load" -v tail="$(tail -n 1 "$log")" -v label="$label" \
    '{printf "cpu %.1f (user %s sys %s) wall %s load[%s] %s :: %s\n", $1 + $2, $1, $2, $3, load, tail, label}'
}

if [ "$1" = "--suite" ]; then
  measure "suite (-n 2)" -n 2 --durations=40
  sed -n '/slowest/,/^$/p' "$log"
else
  for target in "$@"; do
    measure "$target" "$target"
  done
fi
exit "$status"
