#!/usr/bin/env bash
# Scheduler benchmark: tasks per second through the requester's scheduler over three workers
# (`"target": {}`) against the same tasks sent straight to one worker, on a plugin that sleeps
# 10 ms (4 slots per worker), and the requester's CPU per task both ways on a fast plugin (Rust
# hello), whose difference is what choosing a node costs.
# Usage: bench/scheduler.sh [seconds per run, default 10]. Needs wrk, and grpcio-tools for the
# Python test plugin (scripts/test-all installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
[ -d .tools/venv ] && export PATH=$PWD/.tools/venv/bin:$PATH
cargo build --release --quiet -p sphere-node
plugins/python-csv-stats/generate.sh
source bench/lib.sh

read -r requester_pid requester_http requester_grpc < <(start_node requester)
cat >"$work/worker.json" <<JSON
{
  "mesh": {"bootstrap": ["$requester_grpc"]},
  "plugins": {"entries": [
    {"name": "slow", "command": "python3", "args": ["$PWD/node/tests/plugins/misbehaving.py"],
     "env": {"PYTHONPATH": "$PWD/plugins/python-csv-stats", "PLUGIN_NAME": "slow", "PURE": "1"},
     "max_concurrency": 4, "queue_size": 64},
    {"name": "hello", "command": "$PWD/$sphere", "args": ["demo-plugin"]}
  ]}
}
JSON
workers=()
for index in 1 2 3; do
  read -r _ _ grpc < <(start_node "worker$index" --config "$work/worker.json")
  workers+=("$grpc")
done

# Until the requester lists the three workers alive with both plugins serving.
for _ in $(seq 300); do
  ready=$(curl -sf "http://$requester_http/peers" | python3 -c '
import json, sys
peers = json.load(sys.stdin)["peers"]
print(sum(1 for peer in peers if peer["state"] == "alive"
          and sum(plugin["serving"] for plugin in peer["plugins"]) == 2))')
  [ "$ready" = 3 ] && break
  sleep 0.1
done
[ "$ready" = 3 ] || { echo "the workers never all joined" >&2; exit 1; }

ticks_per_second=$(getconf CLK_TCK)
# run LABEL CONNECTIONS [env...] -> one table row: tasks/s, p50, p99, requester CPU per task.
run() {
  local label=$1 connections=$2
  shift 2
  local threads=$(( connections < 2 ? 1 : 2 ))
  local before after report requests
  before=$(cpu_ticks "$requester_pid")
  report=$(env "$@" wrk -t"$threads" -c"$connections" -d"${seconds}s" -s bench/task.lua \
    "http://$requester_http/task")
  after=$(cpu_ticks "$requester_pid")
  requests=$(awk '/^requests:/ {print $2}' <<<"$report")
  [ "$(awk '/^errors:/ {print $2}' <<<"$report")" = 0 ] || { echo "$label: errors" >&2; exit 1; }
  printf '%-34s %5s %9s %9s %9s %9.0f us\n' "$label" "$connections" \
    "$(awk '/^requests\/s:/ {print $2}' <<<"$report")" \
    "$(awk '/^p50:/ {print $2 " " $3}' <<<"$report")" \
    "$(awk '/^p50:/ {print $5 " " $6}' <<<"$report")" \
    "$(echo "($after - $before) * 1000000 / $ticks_per_second / $requests" | bc -l)"
}

printf '%-34s %5s %9s %9s %9s %12s\n' run conc "tasks/s" p50 p99 "CPU/task"
run "slow (10 ms), one worker direct" 32 TARGET="${workers[0]}" PLUGIN=slow INPUT=sleep:10
run "slow (10 ms), scheduler over 3" 32 TARGET_JSON='{}' PLUGIN=slow INPUT=sleep:10
for connections in 1 32; do
  run "hello (Rust), one worker direct" "$connections" TARGET="${workers[0]}" PLUGIN=hello
  run "hello (Rust), scheduler over 3" "$connections" TARGET_JSON='{}' PLUGIN=hello
done
