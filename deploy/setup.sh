#!/bin/sh
# One-shot setup of the compose deployment, run as root in the node image before the nodes start:
# gives each node one of anvil's funded development accounts as its key (only when its volume has
# none, so a node keeps its identity across `down`/`up`), then deploys the payment contract and
# leaves its address in /shared/contract for the nodes. The chain keeps its state on a volume, so
# on a later `up` the contract is there already and nothing is deployed. These keys are public:
# a development chain only. For a real chain, see docs/deploying.md.
set -eu
# anvil's development accounts 1 to 3 (account 0 deploys).
set -- 59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \
       5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a \
       7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6
for node in 1 2 3; do
  key=/nodes/node$node/node.key
  if [ ! -s "$key" ]; then
    (umask 077 && printf '%s\n' "$1" > "$key")
  fi
  chown -R 10001 "/nodes/node$node"
  shift
done
umask 077
printf '%s\n' ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 > /tmp/deployer.key
deployed=$(cat /shared/contract 2>/dev/null || true)
sphere payments deploy --rpc-url "$RPC_URL" --key-file /tmp/deployer.key \
  ${deployed:+--unless-deployed-at "$deployed"} > /shared/contract.new
chmod 644 /shared/contract.new
mv /shared/contract.new /shared/contract
echo "payment contract at $(cat /shared/contract)"
