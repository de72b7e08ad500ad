#!/usr/bin/env bash
# A/B of two p2p-transfer binaries on a folder of many small files, over 127.0.0.1.
#
#   sudo p2p-core/bench/ab_small_files.sh OLD_BINARY NEW_BINARY DATA_DIR [ROUNDS] [WINDOW]
#
# DATA_DIR is a folder to send (benchmark.py leaves its 5,000 files in
# WORKDIR/data/small). Runs alternate between the binaries; each receives into a fresh
# ext4 file system on a loop image in /dev/shm, so that neither the disk's noise nor
# ext4's scan of recently deleted inodes (after an earlier run's output was removed)
# is measured. Prints each run and the means: wall seconds (sender start to both
# exits) and user+system CPU seconds of each end. Needs root (mount), util-linux,
# e2fsprogs and GNU time.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,12p "$0"; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); DATA=$(realpath "$3")
ROUNDS=${4:-6}; WINDOW=${5:-64}
WORK=$(mktemp -d /tmp/p2p-ab.XXXXXX)
IMG=/dev/shm/p2p-ab-$$.img
cleanup() { umount "$WORK/mnt" 2>/dev/null || true; rm -f "$IMG"; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/mnt"
size_mib=$(( $(du -sm "$DATA" | cut -f1) * 3 + 256 ))

one_run() { # BINARY -> "wall send_cpu recv_cpu"
  local bin=$1
  umount "$WORK/mnt" 2>/dev/null || true
  rm -f "$IMG"; truncate -s "${size_mib}M" "$IMG"; mkfs.ext4 -q "$IMG"
  mount -o loop "$IMG" "$WORK/mnt"
  export P2P_TRANSFER_DATA_DIR=$WORK/state
  /usr/bin/time -o "$WORK/rtime" -f "%U %S" "$bin" receive --output "$WORK/mnt/out" \
    --port 0 --bind 127.0.0.1 >/dev/null 2>"$WORK/recv.log" &
  local rpid=$! addr=""
  for _ in $(seq 500); do
    addr=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/recv.log" 2>/dev/null | awk '{print $3}') || true
    [ -n "$addr" ] && break
    sleep 0.01
  done
  [ -n "$addr" ] || { echo "receiver did not start" >&2; kill "$rpid"; exit 1; }
  local t0 t1
  t0=$(date +%s.%N)
  timeout 300 /usr/bin/time -o "$WORK/stime" -f "%U %S" "$bin" send "$DATA" --peer "$addr" \
    --window-size "$WINDOW" >/dev/null 2>&1
  wait "$rpid"
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $(awk '{print $1+$2}' "$WORK/stime") $(awk '{print $1+$2}' "$WORK/rtime")"
}

for r in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    echo "$side $(one_run "$bin")"
  done
done | tee "$WORK/runs"
awk '{w[$1]+=$2; s[$1]+=$3; c[$1]+=$4; n[$1]++}
     END {for (k in w) printf "%s mean: wall %.3f s, sender CPU %.3f s, receiver CPU %.3f s (%d runs)\n",
          k, w[k]/n[k], s[k]/n[k], c[k]/n[k], n[k]}' "$WORK/runs" | sort
