#!/usr/bin/env bash
# Paid work end to end on a local chain: starts anvil, deploys the payment contract, starts a
# requester node and a provider node with payments on, opens a channel, runs paid tasks, stores
# and reads a paid file, has the provider redeem, and prints balances before and after.
# Usage: demo/payments.sh [number of tasks, default 100]. Needs anvil in .tools (scripts/test-all
# installs it, or: npm install --prefix .tools @foundry-rs/anvil-linux-amd64@1.7.1).
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=${1:-100}
cargo build --release --quiet -p sphere-node
sphere=target/release/sphere
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "a local chain (anvil) and the payment contract"
source demo/dev-chain.sh
start_dev_chain 3600
pids+=("$anvil_pid")
echo "contract $contract on $rpc"

step "a requester and a provider with payments on"
cat >"$work/config.json" <<JSON
{"payments": {"enabled": true, "rpc_url": "$rpc", "chain_id": 31337, "contract": "$contract",
  "storage_period_seconds": 3600,
  "prices": {"task_wei": 100000000000000, "storage_gib_day_wei": 1000000000000000,
             "read_gib_wei": 1000000000000000}}}
JSON
start() { # start NAME -> "http grpc"
  "$sphere" node --config "$work/config.json" --data-dir "$work/$1" --log warn \
    --http-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
  until grep -q ready "$work/$1.out" 2>/dev/null; do sleep 0.1; done
  echo "$(sed -E 's/.*http=([^ ]+).*/\1/' "$work/$1.out") $(sed -E 's/.*grpc=([^ ]+).*/\1/' "$work/$1.out")"
}
read -r requester _ < <(start node1)
read -r provider provider_grpc < <(start node2)
balance() { curl -s "$1/payments" | python3 -c 'import json,sys; print(json.load(sys.stdin)["balance_wei"])'; }
balances() {
  for who in requester provider; do
    local url=${!who}
    printf '%-9s balance %s wei, spent %s wei, earned %s wei, pending %s wei\n' "$who" \
      $(curl -s "$url/payments" | python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["balance_wei"], p["spent_wei"], p["earned_wei"], p["pending_wei"])')
  done
}
balances
provider_before=$(balance "$provider")

step "the requester opens a channel to the provider with 0.1 ETH"
curl -s -XPOST "$requester/channels" -d "{\"target\": \"$provider_grpc\", \"deposit\": \"0.1eth\"}"
echo

step "$tasks paid tasks at 0.0001 ETH each"
for i in $(seq "$tasks"); do
  curl -sf -XPOST "$requester/task" -d "{\"target\": \"$provider_grpc\", \"input\": \"hello\"}" >/dev/null
done
echo "done; one voucher each, no transaction"

step "a paid file: 1 MiB stored for one period and read back"
head -c 1048576 /dev/urandom >"$work/file"
stored=$(curl -sf -T "$work/file" "$requester/files/paid.bin?target=$provider_grpc")
id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' <<<"$stored")
curl -sf -o "$work/back" "$requester/files/$id"
cmp "$work/file" "$work/back" && echo "file $id stored and read back byte for byte"
balances

step "the provider redeems: one transaction for everything"
curl -s -XPOST "$provider/payments/redeem"
echo
balances
# The provider also redeemed on its own while the tasks ran, each time its unredeemed amount
# reached payments.redeem_threshold_wei (0.01 ETH by default).
echo "provider's balance grew by $(python3 -c "print($(balance "$provider") - $provider_before)") wei since the start: what it earned minus the gas of its redemptions"
