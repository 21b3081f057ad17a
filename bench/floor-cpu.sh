#!/usr/bin/env bash
# CPU a task of each process, the node and its plugin, for the floor and for Sphere, both up at
# once and run in turn (twice each): wrk at concurrency C against each node's POST /task, the
# node calling itself, CPU read from /proc (utime+stime) before and after.
# Usage: [C=1] [WORKERS=n] [BIN=target/release/sphere] bench/floor-cpu.sh
# WORKERS sets the runtime worker threads of every process (1: no worker wakes another).
# Needs wrk and the floor built (cd ../shared/floor && cargo build --release).
set -uo pipefail
cd "$(dirname "$0")/.."
C=${C:-1}
floor=$(realpath ../shared/floor)
bin=$(realpath "${BIN:-target/release/sphere}")
workers=${WORKERS:-2}
work=$(mktemp -d)
(exec env FLOOR_WORKERS=$workers setsid "$floor/target/release/floor" plugin --plugin-port 18082 >"$work/fp.log" 2>&1 </dev/null &)
sleep 0.5
(exec env FLOOR_WORKERS=$workers setsid "$floor/target/release/floor" node --rest-port 13000 --grpc-port 18081 --plugin-port 18082 >"$work/fn.log" 2>&1 </dev/null &)
mkdir "$work/s"
(cd "$work/s" && exec env TOKIO_WORKER_THREADS=$workers setsid "$bin" node --http-listen 127.0.0.1:13001 --grpc-listen 127.0.0.1:18091 >"$work/sn.log" 2>&1 </dev/null &)
sleep 3
floor_node=$(pgrep -f "floor node --rest-port 13000"); floor_plugin=$(pgrep -f "floor plugin --plugin-port 18082")
sphere_node=$(pgrep -f "grpc-listen 127.0.0.1:18091"); sphere_plugin=$(pgrep -P "$sphere_node" | head -1)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
for run in 1 2; do
  for system in "floor 13000 18081 $floor_node $floor_plugin" "sphere 13001 18091 $sphere_node $sphere_plugin"; do
    set -- $system
    node_before=$(ticks "$4"); plugin_before=$(ticks "$5")
    out=$(FLOOR_TARGET=127.0.0.1:$3 wrk -t1 -c"$C" -d6s -s "$floor/bench.lua" "http://127.0.0.1:$2/task" | grep '^FLOOR')
    tasks=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$out"); p50=$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$out")
    # A tick is 10 ms.
    echo "$1 c=$C workers=$workers tasks=$tasks p50=${p50}us node=$(( ($(ticks "$4") - node_before) * 10000000 / tasks / 1000 ))us plugin=$(( ($(ticks "$5") - plugin_before) * 10000000 / tasks / 1000 ))us a task"
  done
done
kill -- -"$floor_plugin" -"$floor_node" -"$sphere_node" 2>/dev/null
rm -rf "$work"
