#!/usr/bin/env bash
# Storage benchmark: a file of random bytes stored and read back at 1 and 2 replicas between real
# nodes on this machine (throughput, peak RSS of every node), the bytes one audit costs, and dd
# with conv=fdatasync on the same disk for reference.
# Usage: bench/storage.sh [file size in MiB, default 1024].
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release --quiet -p sphere-node
source bench/lib.sh

head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/input"
expected=$(sha256sum "$work/input" | cut -d' ' -f1)

for replicas in 1 2; do
  read -r p1_pid _ p1_grpc < <(start_node "p1-$replicas")
  read -r p2_pid _ p2_grpc < <(start_node "p2-$replicas")
  targets=$p1_grpc
  [ "$replicas" = 2 ] && targets="$p1_grpc,$p2_grpc"
  read -r owner_pid owner_http _ < <(start_node "owner-$replicas")
  sync
  start=$(date +%s.%N)
  stored=$(curl -sf -T "$work/input" "http://$owner_http/files/input?targets=$targets")
  store_seconds=$(echo "$(date +%s.%N) - $start" | bc)
  id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' <<<"$stored")
  start=$(date +%s.%N)
  actual=$(curl -sf "http://$owner_http/files/$id" | sha256sum | cut -d' ' -f1)
  read_seconds=$(echo "$(date +%s.%N) - $start" | bc)
  [ "$actual" = "$expected" ] || { echo "read back differs!" >&2; exit 1; }
  echo "== $size_mib MiB at $replicas replica(s)"
  printf 'store: %.2f s, %.0f MiB/s of file, %.0f MiB/s written to disk over all replicas\n' \
    "$store_seconds" "$(echo "$size_mib / $store_seconds" | bc -l)" \
    "$(echo "$size_mib * $replicas / $store_seconds" | bc -l)"
  printf 'read:  %.2f s, %.0f MiB/s (byte-for-byte identical)\n' "$read_seconds" "$(echo "$size_mib / $read_seconds" | bc -l)"
  echo "peak RSS: owner $(peak_rss_mib "$owner_pid") MiB, providers $(peak_rss_mib "$p1_pid") and $(peak_rss_mib "$p2_pid") MiB"
  stop_nodes
done

echo
echo "== audit cost"
cargo test --release --quiet -p sphere-node --lib -- --nocapture audit_cost 2>/dev/null | grep "bytes per audit"

echo
echo "== disk reference: dd of the same size with conv=fdatasync, same directory"
dd if=/dev/zero of="$work/dd.test" bs=1M count="$size_mib" conv=fdatasync 2>&1 | tail -1
