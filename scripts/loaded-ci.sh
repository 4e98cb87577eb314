#!/usr/bin/env bash
# Runs CI (.ci/run) on a loaded machine: two busy-loop processes at default
# priority keep both cores busy for the whole run, as a shared CI host or a
# training job next to the servers would. Not part of CI itself.
#
#   scripts/loaded-ci.sh [RUNS]      # default 5; stops at the first failure
#
# Prints one line per run (pass/fail, seconds) and keeps each run's output in
# $TMPDIR/pmemps-loaded-ci.<n>.log. Failures are to be fixed at their cause:
# no retry wrappers, no longer sleeps.
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
busy=()
cleanup() { for p in "${busy[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT INT TERM
for _ in 1 2; do
  ( while :; do :; done ) &
  busy+=($!)
done
echo "loaded-ci: ${#busy[@]} busy loops (pids ${busy[*]}), $runs runs of .ci/run on $(nproc) cores"
passed=0
for n in $(seq 1 "$runs"); do
  log="${TMPDIR:-/tmp}/pmemps-loaded-ci.$n.log"
  t0=$(date +%s)
  if .ci/run >"$log" 2>&1; then status=pass; passed=$((passed + 1)); else status=FAIL; fi
  echo "run $n: $status in $(( $(date +%s) - t0 )) s ($(grep -E '^# (pass|fail) ' "$log" | tr '\n' ' ')) log: $log"
  [ "$status" = pass ] || break
done
echo "loaded-ci: $passed of $runs runs passed"
[ "$passed" = "$runs" ]
