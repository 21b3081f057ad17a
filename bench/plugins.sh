#!/usr/bin/env bash
# Plugin benchmark: task round trip through one node (POST /task, no target) to a Rust, a Python
# and a Node.js plugin, at concurrency 1 and 32, with the node's own CPU time per task.
# Usage: bench/plugins.sh [seconds per run, default 10]. Needs wrk, and the example plugins'
# packages (scripts/test-all installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
[ -d .tools/venv ] && export PATH=$PWD/.tools/venv/bin:$PATH
cargo build --release --quiet --workspace
plugins/python-csv-stats/generate.sh
(cd plugins/node-word-count && npm ci --no-audit --no-fund --loglevel=error)
source bench/lib.sh

read -r node_pid node_http _ < <(start_node plugins --config demo/config-plugins.json)
ticks_per_second=$(getconf CLK_TCK)
csv=$'city,population\nLyon,522250\nNantes,320732\nLille,236234\n'

printf '%-12s %5s %10s %9s %9s %14s\n' plugin conc "req/s" p50 p99 "node CPU/task"
for plugin in hello csv-stats word-count; do
  case $plugin in
    hello) input=hello ;;
    csv-stats) input=$csv ;;
    word-count) input="the cat saw the other cat" ;;
  esac
  for connections in 1 32; do
    threads=$(( connections < 2 ? 1 : 2 ))
    before=$(cpu_ticks "$node_pid")
    report=$(PLUGIN=$plugin INPUT=$input wrk -t"$threads" -c"$connections" -d"${seconds}s" \
      -s bench/task.lua "http://$node_http/task")
    after=$(cpu_ticks "$node_pid")
    requests=$(awk '/^requests:/ {print $2}' <<<"$report")
    rate=$(awk '/^requests\/s:/ {print $2}' <<<"$report")
    p50=$(awk '/^p50:/ {print $2 " " $3}' <<<"$report")
    p99=$(awk '/^p50:/ {print $5 " " $6}' <<<"$report")
    errors=$(awk '/^errors:/ {print $2}' <<<"$report")
    [ "$errors" = 0 ] || { echo "$plugin: $errors errors" >&2; exit 1; }
    cpu_us=$(echo "($after - $before) * 1000000 / $ticks_per_second / $requests" | bc -l)
    printf '%-12s %5s %10s %9s %9s %11.0f us\n' "$plugin" "$connections" "$rate" "$p50" "$p99" "$cpu_us"
  done
done
