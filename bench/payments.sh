#!/usr/bin/env bash
# Payments benchmark: paid tasks between two nodes on a local anvil chain, against the same
# tasks unpaid. Reports the node CPU time per task on the provider (which checks each voucher)
# and on the requester (which signs each voucher), with and without payments, then the on-chain
# transactions and gas the whole run cost.
# Usage: bench/payments.sh [seconds per run, default 10]. Needs wrk and anvil in .tools
# (scripts/test-all installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet -p sphere-node
source bench/lib.sh

source demo/dev-chain.sh
start_dev_chain
trap 'kill $anvil_pid 2>/dev/null; stop_nodes; rm -rf "$work"' EXIT
cat >"$work/paid.json" <<JSON
{"payments": {"enabled": true, "rpc_url": "$rpc", "chain_id": 31337, "contract": "$contract",
  "prices": {"task_wei": 1000000000000}, "redeem_threshold_wei": 1000000000000000000000,
  "redeem_interval_ms": 3600000}}
JSON
rpc_call() {
  curl -s -XPOST "$rpc" -H 'content-type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}"
}
nonce() { rpc_call eth_getTransactionCount "[\"$1\",\"latest\"]" | sed -E 's/.*"result":"([^"]+)".*/\1/'; }

ticks_per_second=$(getconf CLK_TCK)
printf '%-7s %5s %9s %9s %9s %18s %19s\n' payments conc "req/s" p50 p99 "provider CPU/task" "requester CPU/task"
run() { # run LABEL REQUESTER_PID REQUESTER_HTTP PROVIDER_PID PROVIDER_GRPC
  for connections in 1 32; do
    threads=$(( connections < 2 ? 1 : 2 ))
    requester_before=$(cpu_ticks "$2"); provider_before=$(cpu_ticks "$4")
    report=$(TARGET=$5 wrk -t"$threads" -c"$connections" -d"${seconds}s" -s bench/task.lua "http://$3/task")
    requester_after=$(cpu_ticks "$2"); provider_after=$(cpu_ticks "$4")
    requests=$(awk '/^requests:/ {print $2}' <<<"$report")
    errors=$(awk '/^errors:/ {print $2}' <<<"$report")
    [ "$errors" = 0 ] || { echo "$1: $errors errors: $report" >&2; exit 1; }
    per_task() { echo "($2 - $1) * 1000000 / $ticks_per_second / $requests" | bc -l; }
    printf '%-7s %5s %9s %9s %9s %15.0f us %16.0f us\n' "$1" "$connections" \
      "$(awk '/^requests\/s:/ {print $2}' <<<"$report")" \
      "$(awk '/^p50:/ {print $2 " " $3}' <<<"$report")" "$(awk '/^p50:/ {print $5 " " $6}' <<<"$report")" \
      "$(per_task "$provider_before" "$provider_after")" "$(per_task "$requester_before" "$requester_after")"
    total_tasks=$(( ${total_tasks:-0} + requests ))
  done
}

read -r free_requester_pid free_requester_http _ < <(start_node free-requester)
read -r free_provider_pid _ free_provider_grpc < <(start_node free-provider)
run off "$free_requester_pid" "$free_requester_http" "$free_provider_pid" "$free_provider_grpc"

read -r requester_pid requester_http _ < <(start_node node1 --config "$work/paid.json")
read -r provider_pid _ provider_grpc < <(start_node node2 --config "$work/paid.json")
curl -sf -XPOST "http://$requester_http/channels" \
  -d "{\"target\": \"$provider_grpc\", \"deposit\": \"1000eth\"}" >"$work/open.json"
total_tasks=0
run on "$requester_pid" "$requester_http" "$provider_pid" "$provider_grpc"
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
