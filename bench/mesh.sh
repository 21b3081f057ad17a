#!/usr/bin/env bash
# Mesh benchmark: time for N nodes bootstrapped from one to all see each other alive, and the
# gossip each node sends and receives per second once they have (10, 50 and 100 nodes unless
# sizes are given). Usage: bench/mesh.sh [N ...]. MEASURE_SECONDS (20) sets the traffic window.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p sphere-node
ulimit -n "$(ulimit -Hn)"
exec python3 bench/mesh.py "$@"
