#!/usr/bin/env bash
# Runs the README's flows against a running node: a task, a small file stored and read back as
# JSON, and a larger file streamed in and out.
# Usage: demo/flows.sh [node REST address] [target gRPC address]
#   local nodes (see README):   demo/flows.sh 127.0.0.1:3000 127.0.0.1:8082
#   docker compose:             demo/flows.sh 127.0.0.1:3000 node2:8081
# A node whose REST API listens beyond loopback (as in docker compose) needs its token: set
# SPHERE_HTTP__TOKEN to the content of its data directory's api.token.
set -euo pipefail
node=${1:-127.0.0.1:3000}
target=${2:-127.0.0.1:8082}
show() { printf '\n$ %s\n' "$*"; "$@"; echo; }
if [ -n "${SPHERE_HTTP__TOKEN:-}" ]; then
  curl() { command curl -H "Authorization: Bearer $SPHERE_HTTP__TOKEN" "$@"; }
fi

show curl -sS -X POST "$node/task" -d "{\"target\": \"$target\", \"id\": \"1\", \"input\": \"hello\"}"

stored=$(curl -sS -X POST "$node/file" \
  -d "{\"target\": \"$target\", \"name\": \"my_awesome_file\", \"data\": \"TXkgYXdlc29tZSBsb25nIGxvbmcgbG9uZyBzdHJpbmch\"}")
printf '\n$ curl -X POST %s/file ...\n%s\n' "$node" "$stored"
id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' <<<"$stored")
show curl -sS -X GET "$node/file" -d "{\"target\": \"$target\", \"id\": \"$id\"}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c $((32 * 1024 * 1024)) /dev/urandom >"$tmp/big"
stored=$(curl -sS -T "$tmp/big" "$node/files/big?target=$target")
printf '\n$ curl -T big %s/files/big?target=%s\n%s\n' "$node" "$target" "$stored"
id=$(sed -E 's/.*"id":"([0-9a-f]+)".*/\1/' <<<"$stored")
curl -sS -o "$tmp/back" "$node/files/$id"
cmp "$tmp/big" "$tmp/back" && echo "32 MiB file streamed back byte for byte"
