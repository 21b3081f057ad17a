#!/usr/bin/env bash
# Storage benchmark: a file of random bytes stored and read back between real nodes on this
# machine, against `dd conv=fdatasync` of the same size on the same disk. At one replica, RUNS
# pairs (default 3) of a dd and a store, alternating which goes first, each pair giving a ratio
# (this shared disk's own rate moves by a fifth between runs, so only figures from one pair compare);
# then one store at two replicas; peak RSS of every node; the bytes one audit costs.
# Usage: RUNS=3 bench/storage.sh [file size in MiB, default 1024].
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${RUNS:-3}
cargo build --release --quiet -p sphere-node
source bench/lib.sh

head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/input"
expected=$(sha256_of <"$work/input")

seconds_since() { echo "$(date +%s.%N) - $1" | bc; }
mib_per_second() { echo "$size_mib / $1" | bc -l; }

# dd_seconds -> seconds dd takes to write the file's size and fdatasync it, next to the nodes' data.
dd_seconds() {
  sync
  local start
  start=$(date +%s.%N)
  dd if=/dev/zero of="$work/dd.test" bs=1M count="$size_mib" conv=fdatasync 2>/dev/null
  seconds_since "$start"
  rm -f "$work/dd.test"
}

# store REPLICAS RUN -> "store_seconds read_seconds owner_rss provider_rss provider_rss
# owner_cpu_seconds provider_cpu_seconds" (CPU spent on the store, by the owner and the first
# provider), on fresh nodes; the file read back must be byte for byte the one stored.
store() {
  local replicas=$1 run=$2 p1_pid p2_pid p1_grpc p2_grpc owner_pid owner_http targets start
  read -r p1_pid _ p1_grpc < <(start_node "p1-$replicas-$run")
  read -r p2_pid _ p2_grpc < <(start_node "p2-$replicas-$run")
  targets=$p1_grpc
  [ "$replicas" = 2 ] && targets="$p1_grpc,$p2_grpc"
  read -r owner_pid owner_http _ < <(start_node "owner-$replicas-$run")
  sync
  local stored id store_seconds read_seconds actual owner_ticks p1_ticks
  owner_ticks=$(cpu_ticks "$owner_pid"); p1_ticks=$(cpu_ticks "$p1_pid")
  start=$(date +%s.%N)
  stored=$(curl -sf -T "$work/input" "http://$owner_http/files/input?targets=$targets")
  store_seconds=$(seconds_since "$start")
  owner_ticks=$(($(cpu_ticks "$owner_pid") - owner_ticks)); p1_ticks=$(($(cpu_ticks "$p1_pid") - p1_ticks))
  id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' <<<"$stored")
  start=$(date +%s.%N)
  actual=$(curl -sf "http://$owner_http/files/$id" | sha256_of)
  read_seconds=$(seconds_since "$start")
  [ "$actual" = "$expected" ] || { echo "read back differs!" >&2; exit 1; }
  echo "$store_seconds $read_seconds $(peak_rss_mib "$owner_pid") $(peak_rss_mib "$p1_pid") $(peak_rss_mib "$p2_pid") $(echo "$owner_ticks / 100" | bc -l) $(echo "$p1_ticks / 100" | bc -l)"
  # The nodes' data stays until the script ends: on ext4 without a journal (this machine's disk),
  # a new file's inode is searched for past those deleted in the last seconds, so deleting a
  # run's thousand chunk files would slow the next run's provider.
  stop_nodes
}

echo "== $size_mib MiB at 1 replica against dd conv=fdatasync, $runs pairs"
ratios=()
for run in $(seq "$runs"); do
  if [ $((run % 2)) = 1 ]; then
    dd=$(dd_seconds)
    read -r stored read owner p1 _ owner_cpu p1_cpu < <(store 1 "$run")
  else
    read -r stored read owner p1 _ owner_cpu p1_cpu < <(store 1 "$run")
    dd=$(dd_seconds)
  fi
  ratio=$(echo "$dd / $stored" | bc -l)
  ratios+=("$ratio")
  printf 'pair %d: store %.0f MiB/s, dd %.0f MiB/s, ratio %.2f; read %.0f MiB/s; peak RSS owner %s, provider %s MiB; store CPU owner %.2f s, provider %.2f s\n' \
    "$run" "$(mib_per_second "$stored")" "$(mib_per_second "$dd")" "$ratio" "$(mib_per_second "$read")" "$owner" "$p1" "$owner_cpu" "$p1_cpu"
done
printf 'ratios, sorted: %s\n' "$(printf '%.2f\n' "${ratios[@]}" | sort -n | tr '\n' ' ')"

echo
echo "== $size_mib MiB at 2 replicas (both providers on this one disk)"
read -r stored read owner p1 p2 _ < <(store 2 1)
printf 'store %.0f MiB/s of file, %.0f MiB/s written over both replicas; read %.0f MiB/s; peak RSS owner %s, providers %s and %s MiB\n' \
  "$(mib_per_second "$stored")" "$(echo "2 * $size_mib / $stored" | bc -l)" "$(mib_per_second "$read")" "$owner" "$p1" "$p2"

echo
echo "== audit cost"
cargo test --profile ci --quiet -p sphere-node --lib -- --nocapture audit_cost 2>/dev/null | grep "bytes per audit"
