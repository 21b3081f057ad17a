#!/usr/bin/env bash
# Sphere benchmarks: task round trip through the REST API (wrk) and a 1 GiB file stored and read
# back between two nodes (throughput and peak RSS of each node), next to dd on the same disk.
# Usage: bench/run.sh [file size in MiB, default 1024]. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet -p sphere-node
source bench/lib.sh


read -r owner_pid owner_http owner_grpc < <(start_node owner)
read -r provider_pid provider_http provider_grpc < <(start_node provider)

echo "== task round trip: POST /task on one node, target the other (wrk, 10 s each)"
for connections in 1 32; do
  threads=$(( connections < 2 ? 1 : 2 ))
  echo "-- concurrency $connections"
  TARGET=$provider_grpc wrk -t"$threads" -c"$connections" -d10s -s bench/task.lua \
    "http://$owner_http/task" | tail -3 | head -2
done

echo
echo "== files: ${size_mib} MiB stored and read back (owner -> provider)"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/input"
expected=$(sha256_of <"$work/input")
sync
start=$(date +%s.%N)
id=$(curl -sf -T "$work/input" "http://$owner_http/files/input?target=$provider_grpc" |
  sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
store_seconds=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
actual=$(curl -sf "http://$owner_http/files/$id" | sha256_of)
read_seconds=$(echo "$(date +%s.%N) - $start" | bc)
[ "$actual" = "$expected" ] || { echo "read back differs!" >&2; exit 1; }
printf 'store: %.2f s, %.0f MiB/s\n' "$store_seconds" "$(echo "$size_mib / $store_seconds" | bc -l)"
printf 'read:  %.2f s, %.0f MiB/s (byte-for-byte identical)\n' "$read_seconds" "$(echo "$size_mib / $read_seconds" | bc -l)"
echo "peak RSS: owner $(peak_rss_mib "$owner_pid") MiB, provider $(peak_rss_mib "$provider_pid") MiB"

echo
echo "== disk reference: dd of the same size with conv=fdatasync, same directory"
dd if=/dev/zero of="$work/dd.test" bs=1M count="$size_mib" conv=fdatasync 2>&1 | tail -1
