#!/usr/bin/env bash
# Measures TCP through the emulator: iperf3 from host 1 to host 2 over PROFILE with the
# given congestion control, plus the forwarder's CPU time and its stats.
#
#   tests/wan/iperf.sh PROFILE [CC] [SECONDS] [PREFIX]
#
# Needs root, iperf3, ethtool and a built p2p-wan (P2P_WAN=path, default: cargo's
# target dir). Prints one summary line, then the forwarder's final stats (JSON).
set -euo pipefail
profile=${1:?profile}
cc=${2:-cubic}
secs=${3:-15}
prefix=${4:-wanperf$$}
wan=${P2P_WAN:-${CARGO_TARGET_DIR:-target}/release/p2p-wan}
[[ -x $wan ]] || wan=${CARGO_TARGET_DIR:-target}/debug/p2p-wan
out=$(mktemp)
"$wan" up --prefix "$prefix" --profile "$profile" >"$out" &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q '^ready' "$out" && break; sleep 0.1; done
grep -q '^ready' "$out" || { echo "p2p-wan did not come up" >&2; exit 1; }
ip netns exec "$prefix-h2" iperf3 -s -1 -D
sleep 0.3
cpu0=$(awk '{print $14+$15}' /proc/$pid/stat)
json=$(ip netns exec "$prefix-h1" iperf3 -c 10.201.0.2 -t "$secs" -C "$cc" -J)
cpu1=$(awk '{print $14+$15}' /proc/$pid/stat)
hz=$(getconf CLK_TCK)
python3 - "$profile" "$cc" "$secs" "$(( cpu1 - cpu0 ))" "$hz" <<PY
import json, sys
profile, cc, secs, ticks, hz = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = json.loads('''$json''')
end = r["end"]
rx = end["sum_received"]["bits_per_second"]
retr = end["sum_sent"].get("retransmits", 0)
print(f"{profile:18} {cc:6} {rx/1e6:8.1f} Mbit/s  {rx/8/2**20:6.2f} MiB/s  retransmits {retr:6}  forwarder CPU {ticks/hz/secs*100:5.1f}% of one core")
PY
kill -INT $pid; wait $pid || true
grep '"final":true' "$out"
trap - EXIT; rm -f "$out"
