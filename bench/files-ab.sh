#!/usr/bin/env bash
# A/B of two builds on the file path: a file of random bytes stored and read back at one replica,
# with build A and build B in turn (which goes first alternates), each on fresh nodes. Prints, per
# run, store and read MiB/s and the CPU seconds (utime+stime from /proc) the owner and the provider
# spent on each, then the median of B/A of the owner's CPU for a store over the pairs.
# Usage: A=path/to/old/sphere B=target/release/sphere [RUNS=4] [SIZE=1024 MiB] bench/files-ab.sh
# On this machine's ext4 (no journal) a run's data stays until the end, as in bench/storage.sh;
# with BENCH_DIR=/dev/shm (no disk: the CPU only) each run's data is deleted after it, so the
# page cache does not grow into memory the virtual machine's host has not given it yet, whose
# first touch slows writing by several times (BENCHMARKS.md, "Storage").
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "${A:?the old build}"); B=$(realpath "${B:-target/release/sphere}")
size_mib=${SIZE:-1024}
source bench/lib.sh
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/input"

# one BUILD NAME -> "NAME store_mib_s owner_cpu provider_cpu read_mib_s owner_cpu provider_cpu"
one() {
  sphere=$1
  local provider_pid provider owner_pid owner id t0 t1 t2 o0 p0 o1 p1 o2 p2
  read -r provider_pid _ provider < <(start_node "provider-$2")
  read -r owner_pid owner _ < <(start_node "owner-$2")
  o0=$(cpu_ticks "$owner_pid"); p0=$(cpu_ticks "$provider_pid"); t0=$(date +%s.%N)
  id=$(curl -sf -T "$work/input" "http://$owner/files/input?targets=$provider" |
    sed -E 's/.*"id":"([0-9a-f]+)".*/\1/')
  o1=$(cpu_ticks "$owner_pid"); p1=$(cpu_ticks "$provider_pid"); t1=$(date +%s.%N)
  curl -sf "http://$owner/files/$id" -o /dev/null
  o2=$(cpu_ticks "$owner_pid"); p2=$(cpu_ticks "$provider_pid"); t2=$(date +%s.%N)
  stop_nodes
  if [ "$(stat -f -c %T "$work")" = tmpfs ]; then rm -rf "$work/provider-$2" "$work/owner-$2"; fi
  echo "$2 $(echo "$size_mib / ($t1 - $t0)" | bc -l) $(((o1 - o0))) $(((p1 - p0))) $(echo "$size_mib / ($t2 - $t1)" | bc -l) $(((o2 - o1))) $(((p2 - p1)))"
}

for run in $(seq "${RUNS:-4}"); do
  if [ $((run % 2)) = 1 ]; then one "$A" "A$run"; one "$B" "B$run"; else one "$B" "B$run"; one "$A" "A$run"; fi
done | python3 -c '
import sys, statistics
rows = [line.split() for line in sys.stdin]
hz = 100
for name, store, so, sp, read, ro, rp in rows:
    print(f"{name[0]} store {float(store):5.0f} MiB/s, CPU owner {int(so)/hz:.2f} s provider {int(sp)/hz:.2f} s"
          f" | read {float(read):5.0f} MiB/s, CPU owner {int(ro)/hz:.2f} s provider {int(rp)/hz:.2f} s")
owner = {row[0]: int(row[2]) for row in rows}
ratios = sorted(owner["B" + name[1:]] / owner[name] for name in owner if name[0] == "A")
print("owner CPU per store, B/A per pair: median %.2f (pairs %s)"
      % (statistics.median(ratios), ", ".join("%.2f" % r for r in ratios)))
'
