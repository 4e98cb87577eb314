#!/usr/bin/env bash
# Prepares a persistent-memory namespace for pmemps shards:
#   an fsdax namespace on a PMEM region (ndctl create-namespace --mode fsdax),
#   an ext4 (or xfs) filesystem on its block device, mounted with -o dax,
#   one directory per shard owned by the service user.
#
#   sudo deploy/pmem-setup.sh [--region region0] [--mount /mnt/pmem0]
#                             [--fs ext4|xfs] [--user pmemps] [--shards ps0,ps1]
#                             [--yes]
#
# NOT TESTED HERE: the machines this project is developed and tested on have
# no persistent memory (no ndctl regions), so this script has never been run
# against real PMEM; check every step on your hardware before trusting it.
# Creating a namespace DESTROYS what the region held: without --yes the
# script only prints what it would do.
#
# Other ways to give pmemps persistent or large memory:
# - Persistent memory as a NUMA node (KMEM DAX): `ndctl create-namespace
#   --mode devdax` then `daxctl reconfigure-device --mode system-ram daxX.Y`
#   turns it into ordinary (volatile) memory of a CPU-less NUMA node. It then
#   holds no pool that survives a reboot; run pserver under `numactl
#   --membind=<node>` with --pmem on a tmpfs mounted with mpol=bind:<node>
#   to keep a large pool out of DRAM, and treat every restart as a crash.
# - CXL memory: a CXL.mem device appears either as a NUMA node (as above,
#   volatile) or, for persistent CXL memory, as an nvdimm region that this
#   script prepares like any other (`cxl list -R`, then --region).
set -euo pipefail

region=region0
mnt=/mnt/pmem0
fstype=ext4
user=pmemps
shards=ps0
apply=0

usage() { sed -n '2,14p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --region) region=$2; shift 2 ;;
    --mount) mnt=$2; shift 2 ;;
    --fs) fstype=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --yes) apply=1; shift ;;
    -h | --help) usage ;;
    *) echo "pmem-setup: unknown argument $1" >&2; usage ;;
  esac
done

case "$fstype" in ext4 | xfs) ;; *) echo "pmem-setup: --fs must be ext4 or xfs" >&2; exit 2 ;; esac

run() {
  echo "+ $*"
  if [ "$apply" = 1 ]; then "$@"; fi
}

for tool in ndctl jq "mkfs.$fstype"; do
  command -v "$tool" >/dev/null || { echo "pmem-setup: $tool is missing (Debian: apt-get install ndctl jq e2fsprogs xfsprogs)" >&2; exit 1; }
done

if ! ndctl list -R -r "$region" | jq -e 'length > 0' >/dev/null 2>&1; then
  echo "pmem-setup: no PMEM region $region (ndctl list -R shows the regions; none means no persistent memory here)" >&2
  exit 1
fi

# The block device of the new namespace is only known once it exists: in a
# dry run, name it after the region's first pmem device.
if [ "$apply" = 1 ]; then
  ns=$(ndctl create-namespace --region "$region" --mode fsdax --map dev --force)
  dev=/dev/$(jq -r .blockdev <<<"$ns")
  echo "+ ndctl create-namespace --region $region --mode fsdax --map dev --force  -> $dev"
else
  echo "+ ndctl create-namespace --region $region --mode fsdax --map dev --force"
  dev=/dev/pmemX
fi

# 2 MiB-aligned extents let the kernel map the pool with huge pages.
if [ "$fstype" = ext4 ]; then
  run mkfs.ext4 -F -b 4096 -E stride=512 "$dev"
else
  run mkfs.xfs -f -m reflink=0 -d su=2m,sw=1 "$dev"
fi
run mkdir -p "$mnt"
run mount -o dax "$dev" "$mnt"
echo "  to mount at boot, add to /etc/fstab:  UUID=\$(blkid -s UUID -o value $dev)  $mnt  $fstype  dax,nofail  0 0"

IFS=, read -r -a names <<<"$shards"
for s in "${names[@]}"; do
  run install -d -m 0700 -o "$user" -g "$user" "$mnt/$s"
done

if [ "$apply" = 1 ]; then
  # A filesystem that silently fell back to page-cache mappings would serve
  # pmemps with msync flushes: check the kernel accepted DAX.
  if ! grep -E "^$dev $mnt " /proc/mounts | grep -q dax; then
    echo "pmem-setup: $mnt is mounted without dax; see dmesg" >&2
    exit 1
  fi
  echo "pmem-setup: $mnt ready; start shards with --pmem $mnt/<shard> (deploy/systemd/pmemps@.service)"
else
  echo "pmem-setup: dry run; add --yes to do it"
fi
