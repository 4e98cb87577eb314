#!/usr/bin/env bash
# Runs a command inside a cgroup-v1 memory group limited to LIMIT_MB MiB.
# The page cache of files the command reads or maps is charged to the group,
# so a pool larger than the limit cannot stay cached: the benchmark's disk
# figures then measure the disk, not RAM. Needs root and cgroup v1's memory
# controller at /sys/fs/cgroup/memory.
#   scripts/memcg-run.sh 4096 node dist/bench/engine.js --media disk-logged
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LIMIT_MB command [args...]" >&2
  exit 2
fi
limit_mb=$1
shift
root=/sys/fs/cgroup/memory
cg="$root/pmemps-memcg-$$"
mkdir "$cg"
cleanup() {
  echo $$ > "$root/cgroup.procs" 2>/dev/null || true
  rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
echo $((limit_mb * 1024 * 1024)) > "$cg/memory.limit_in_bytes"
echo $$ > "$cg/cgroup.procs"
"$@"
