#!/usr/bin/env bash
# What tonic's `Buffer` costs on the floor's task path (BENCHMARKS.md, "Calls without tonic's
# Buffer"): the floor as it is (A) against the floor whose two gRPC clients send on hyper's
# HTTP/2 `SendRequest` directly (B, bench/floor-direct.patch), both up at once, runs
# alternating, at c=1 and c=32; prints req/s, p50 and p99 of each and B/A per pair.
# Usage, from the repository root: [RUNS=5] [DURATION=6s] bench/floor-direct.sh
# Needs wrk and ../shared/floor (built here with its own release profile; about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
floor=$(realpath ../shared/floor)
copy=target/floor-direct
rm -rf "$copy" && mkdir -p "$copy"
cp -r "$floor"/{Cargo.toml,Cargo.lock,build.rs,proto,src} "$copy"/
patch -s -d "$copy" -p1 <bench/floor-direct.patch
(cd "$floor" && cargo build --release -q)
(cd "$copy" && cargo build --release -q --target-dir ../floor-direct-target)
A=$floor/target/release/floor
B=$(realpath target/floor-direct-target/release/floor)
W=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start() { (exec setsid "$@" >/dev/null 2>&1) & pids+=($!); }
start "$A" plugin --plugin-port 18082
start "$B" plugin --plugin-port 18084
wait_port 18082; wait_port 18084
start "$A" node --rest-port 13000 --grpc-port 18081 --plugin-port 18082
start "$B" node --rest-port 13002 --grpc-port 18083 --plugin-port 18084
wait_port 13000; wait_port 13002
one() { # name rest-port grpc-port c
  local threads=$([ "$4" = 1 ] && echo 1 || echo 2)
  FLOOR_TARGET=127.0.0.1:$3 wrk -t"$threads" -c"$4" -d"${DURATION:-6s}" --latency -s "$floor/bench.lua" \
    "http://127.0.0.1:$2/task" 2>/dev/null | sed -n "s/^FLOOR /sys=$1 c=$4 /p"
}
for c in 1 32; do
  one a 13000 18081 $c >/dev/null; one b 13002 18083 $c >/dev/null # warm-up
  for _ in $(seq "${RUNS:-5}"); do one a 13000 18081 $c; one b 13002 18083 $c; done
done >"$W/runs.txt"
python3 - "$W/runs.txt" <<'PY'
import sys, statistics
rows = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1]) if line.strip()]
for c in ("1", "32"):
    rate = {s: [int(r["requests"]) / (int(r["duration_us"]) / 1e6) for r in rows if r["c"] == c and r["sys"] == s] for s in "ab"}
    for s, name in (("a", "floor"), ("b", "floor, direct")):
        rs = [r for r in rows if r["c"] == c and r["sys"] == s]
        bad = sum(int(r["errors"]) + int(r["non2xx"]) for r in rs)
        print(f"{name:14s} c={c}: {statistics.median(rate[s]):.0f} req/s, p50 {statistics.median(int(r['p50_us']) for r in rs) / 1000:.3f} ms, "
              f"p99 {statistics.median(int(r['p99_us']) for r in rs) / 1000:.3f} ms, errors {bad}")
    pairs = sorted(b / a for a, b in zip(rate["a"], rate["b"]))
    print(f"B/A c={c}: median {statistics.median(pairs):.2f} (pairs {pairs[0]:.2f}-{pairs[-1]:.2f})")
PY
