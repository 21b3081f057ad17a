#!/usr/bin/env bash
# Payments benchmark: paid tasks between two nodes on a local anvil chain against the same tasks
# unpaid between two other nodes, all four up at once and the runs alternating (paid, unpaid,
# paid, ...), so that the ratio of each pair of runs compares like with like on a shared machine.
# Reports req/s, p50, p99 and the node CPU time per task on the provider (which checks vouchers
# and records what it charged) and on the requester (which signs vouchers), then the on-chain
# transactions and gas the whole run cost.
# Usage: bench/payments.sh [seconds per run, default 10]; RUNS pairs per concurrency (default 3);
# PREPAID=n sets the requester's payments.prepaid_tasks (default: the node's default). Needs wrk
# and anvil in .tools (scripts/test-all installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
runs=${RUNS:-3}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet -p sphere-node
source bench/lib.sh

source demo/dev-chain.sh
start_dev_chain
trap 'kill $anvil_pid 2>/dev/null; stop_nodes; rm -rf "$work"' EXIT
prepaid=""
[ -z "${PREPAID:-}" ] || prepaid=", \"prepaid_tasks\": $PREPAID"
cat >"$work/paid.json" <<JSON
{"payments": {"enabled": true, "rpc_url": "$rpc", "chain_id": 31337, "contract": "$contract",
  "prices": {"task_wei": 1000000000000}, "redeem_threshold_wei": 10000000000000000000,
  "redeem_interval_ms": 3600000$prepaid}}
JSON
rpc_call() {
  curl -s -XPOST "$rpc" -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}"
}
nonce() { rpc_call eth_getTransactionCount "[\"$1\",\"latest\"]" | sed -E 's/.*"result":"([^"]+)".*/\1/'; }

ticks_per_second=$(getconf CLK_TCK)
# one LABEL CONNECTIONS REQUESTER_PID REQUESTER_HTTP PROVIDER_PID PROVIDER_GRPC [seconds]
#   -> "LABEL CONNECTIONS req/s p50_ms p99_ms provider_us requester_us requests"
one() {
  local threads=$(( $2 < 2 ? 1 : 2 ))
  local requester_before provider_before report requester_after provider_after
  requester_before=$(cpu_ticks "$3"); provider_before=$(cpu_ticks "$5")
  report=$(TARGET=$6 wrk -t"$threads" -c"$2" -d"${7:-$seconds}s" -s bench/task.lua "http://$4/task")
  requester_after=$(cpu_ticks "$3"); provider_after=$(cpu_ticks "$5")
  local requests errors
  requests=$(awk '/^requests:/ {print $2}' <<<"$report")
  errors=$(awk '/^errors:/ {print $2}' <<<"$report")
  [ "$errors" = 0 ] || { echo "$1: $errors errors: $report" >&2; exit 1; }
  per_task() { echo "($2 - $1) * 1000000 / $ticks_per_second / $requests" | bc -l; }
  printf '%s %s %s %s %s %.0f %.0f %s\n' "$1" "$2" \
    "$(awk '/^requests\/s:/ {print $2}' <<<"$report")" \
    "$(awk '/^p50:/ {print $2}' <<<"$report")" "$(awk '/^p50:/ {print $5}' <<<"$report")" \
    "$(per_task "$provider_before" "$provider_after")" "$(per_task "$requester_before" "$requester_after")" \
    "$requests"
}

read -r free_requester_pid free_requester_http _ < <(start_node free-requester)
read -r free_provider_pid _ free_provider_grpc < <(start_node free-provider)
read -r requester_pid requester_http _ < <(start_node node1 --config "$work/paid.json")
read -r provider_pid _ provider_grpc < <(start_node node2 --config "$work/paid.json")
curl -sf -XPOST "http://$requester_http/channels" \
  -d "{\"target\": \"$provider_grpc\", \"deposit\": \"1000eth\"}" >"$work/open.json"
off() { one off "$1" "$free_requester_pid" "$free_requester_http" "$free_provider_pid" "$free_provider_grpc" "${2:-}"; }
on() { one on "$1" "$requester_pid" "$requester_http" "$provider_pid" "$provider_grpc" "${2:-}"; }
off 32 2 >/dev/null; on 32 2 >/dev/null   # warm up: links, channels, caches
for connections in 1 32; do
  for _ in $(seq "$runs"); do on "$connections"; off "$connections"; done
done >"$work/runs.txt"
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print(f"{'payments':8} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'provider CPU/task':>18} {'requester CPU/task':>19}")
for conc in ("1", "32"):
    for label in ("off", "on"):
        runs = [r for r in rows if r[0] == label and r[1] == conc]
        med = lambda i: statistics.median(float(r[i]) for r in runs)
        print(f"{label:8} {conc:>4} {med(2):8.0f} {med(3):7.2f} {med(4):7.2f} {med(5):15.0f} us {med(6):16.0f} us")
    on = [float(r[2]) for r in rows if r[0] == "on" and r[1] == conc]
    off = [float(r[2]) for r in rows if r[0] == "off" and r[1] == conc]
    ratios = [a / b for a, b in zip(on, off)]
    print(f"paid/unpaid at c={conc}: median {statistics.median(ratios):.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})")
PY
total_tasks=$(awk '$1 == "on" {sum += $8} END {print sum}' "$work/runs.txt")
provider_http=$(sed -E 's/.*http=([^ ]+).*/\1/' "$work/node2.out")
earned=$(curl -sf "http://$provider_http/payments" | sed -E 's/.*"earned_wei":"([^"]+)".*/\1/')
curl -sf -XPOST "http://$provider_http/payments/redeem" >"$work/redeem.json"

open_tx=$(sed -E 's/.*"tx":"([^"]+)".*/\1/' "$work/open.json")
redeem_tx=$(sed -E 's/.*"tx":"([^"]+)".*/\1/' "$work/redeem.json")
gas_of() { rpc_call eth_getTransactionReceipt "[\"$1\"]" | sed -E 's/.*"gasUsed":"([^"]+)".*/\1/'; }
requester_id=$(awk '{print $3}' "$work/node1.out"); provider_id=$(awk '{print $3}' "$work/node2.out")
echo
echo "paid tasks: $total_tasks; transactions: requester $(( $(nonce "$requester_id") )), provider $(( $(nonce "$provider_id") ))"
echo "gas: open $(( $(gas_of "$open_tx") )), redeem $(( $(gas_of "$redeem_tx") )), total $(( $(gas_of "$open_tx") + $(gas_of "$redeem_tx") ))"
# wrk counts the answers it read; tasks it abandoned at the end of a run were still done and paid.
echo "redeemed: $(sed -E 's/.*"paid_wei":"([^"]+)".*/\1/' "$work/redeem.json") wei; earned by the provider: $earned wei (tasks at 1000000000000 wei)"
