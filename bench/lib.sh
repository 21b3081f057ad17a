# Helpers shared by the benchmark scripts; source it from the repository root after building.
# Sets $sphere (the release binary) and $work (a scratch directory under target/, or $BENCH_DIR),
# and stops every node and removes $work when the script exits.

sphere=target/release/sphere
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" sphere-bench.XXXXXX)

# start_node NAME [extra sphere node args...] -> prints "pid http grpc" once the node is ready.
start_node() {
  local name=$1
  shift
  "$sphere" node --data-dir "$work/$name" --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --log warn "$@" >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  for _ in $(seq 300); do grep -q ready "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  local line
  line=$(head -1 "$work/$name.out")
  [ -n "$line" ] || { echo "node $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
  echo "$pid $(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line") $(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")"
}

# sha256_of < FILE -> the SHA-256 of stdin in hex. OpenSSL's, which uses the CPU's SHA
# instructions: coreutils' sha256sum runs at about 330 MiB/s here, slower than a read back, which
# it would otherwise measure instead.
sha256_of() { openssl dgst -sha256 -r | cut -d' ' -f1; }

# cpu_ticks PID -> user + system CPU time of the process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# peak_rss_mib PID -> peak resident memory of the process, MiB.
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# stop_nodes: stops every node started with start_node (their plugins stop with them).
stop_nodes() {
  pkill -TERM -f -- "--data-dir $work/" 2>/dev/null || true
  wait 2>/dev/null || true
}

trap 'stop_nodes; rm -rf "$work"' EXIT
