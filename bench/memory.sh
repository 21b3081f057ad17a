#!/usr/bin/env bash
# Memory after a burst: 500 clients at once each store a small file (PUT /files, 64 KiB) through
# one node onto a provider and read it back (GET /files/{id}); the requester's resident memory
# (RSS) before, at the end of the burst, and after 10 s idle.
# Usage: bench/memory.sh [clients, default 500] [file size in KiB, default 64].
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-500}
size_kib=${2:-64}
cargo build --release --quiet -p sphere-node
source bench/lib.sh

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

read -r _ _ provider_grpc < <(start_node provider)
read -r owner_pid owner_http _ < <(start_node owner)
head -c "$((size_kib * 1024))" /dev/urandom >"$work/small"
# One round trip first, so that start-up allocations are not counted as the burst's.
curl -sf -T "$work/small" "http://$owner_http/files/warm?target=$provider_grpc" >/dev/null
sleep 1
before=$(rss_mib "$owner_pid")

# All uploads at once from one curl (-Z), then all downloads at once.
uploads=()
for i in $(seq "$clients"); do
  uploads+=(-T "$work/small" "http://$owner_http/files/f$i?target=$provider_grpc" -o "$work/put-$i.json")
done
start=$(date +%s.%N)
curl -sSfZ --parallel-max "$clients" --parallel-immediate "${uploads[@]}"
downloads=()
for i in $(seq "$clients"); do
  id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' "$work/put-$i.json")
  downloads+=("http://$owner_http/files/$id" -o "$work/get-$i")
done
curl -sSfZ --parallel-max "$clients" --parallel-immediate "${downloads[@]}"
seconds=$(echo "$(date +%s.%N) - $start" | bc)
for i in $(seq "$clients"); do
  cmp -s "$work/get-$i" "$work/small" || { echo "round trip $i differs" >&2; exit 1; }
done
after_burst=$(rss_mib "$owner_pid")
peak=$(peak_rss_mib "$owner_pid")
threads_burst=$(awk '/Threads/ {print $2}' "/proc/$owner_pid/status")
sleep 10
idle=$(rss_mib "$owner_pid")
threads_idle=$(awk '/Threads/ {print $2}' "/proc/$owner_pid/status")
sleep 20
idle30=$(rss_mib "$owner_pid")
echo "== $clients clients at once, $size_kib KiB each, stored and read back in $(printf '%.1f' "$seconds") s"
echo "requester RSS: before $before MiB, end of burst $after_burst MiB (peak $peak MiB, $threads_burst threads), after 10 s idle $idle MiB ($threads_idle threads), after 30 s $idle30 MiB"
