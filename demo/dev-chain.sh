# A local development chain with Sphere's payment contract, for demo/payments.sh and
# bench/payments.sh. Source it, then call `start_dev_chain [challenge period seconds]` with
# $sphere (the release binary) and $work (a scratch directory) set. It starts anvil (from .tools;
# scripts/test-all installs it) on a free port, writes the node keys of anvil's well-known
# development accounts 0, 1 and 2 (10,000 ETH each) to $work/node0..2/node.key, deploys the
# contract with account 0, and sets $anvil_pid, $rpc and $contract. Stopping anvil is the caller's.

start_dev_chain() {
  local anvil=.tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
  [ -x "$anvil" ] || {
    echo "anvil is missing: npm install --prefix .tools @foundry-rs/anvil-linux-amd64@1.7.1" >&2
    exit 1
  }
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$anvil" --port "$port" --silent >"$work/anvil.log" 2>&1 &
  anvil_pid=$!
  rpc="http://127.0.0.1:$port"
  until curl -s -o /dev/null -XPOST "$rpc" -d '{}'; do sleep 0.1; done
  local keys=(ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
    59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
    5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a)
  local i
  for i in 0 1 2; do
    mkdir -p "$work/node$i"
    echo "${keys[$i]}" >"$work/node$i/node.key"
    chmod 600 "$work/node$i/node.key"
  done
  contract=$("$sphere" payments deploy --rpc-url "$rpc" --key-file "$work/node0/node.key" \
    --challenge-period-seconds "${1:-86400}")
}
