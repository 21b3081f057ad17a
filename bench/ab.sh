#!/usr/bin/env bash
# A/B of two builds of the node, both up at once, runs alternating (shared machines drift), each
# node targeting itself with the floor's wrk script: req/s, p50 and the node's CPU per task
# (utime+stime from /proc) at c=32 and c=1, and the ratio B/A per pair of runs.
# Usage: A=path/to/old/sphere B=target/release/sphere [RUNS=5] [DUR=5s] [WORKERS=n] [BY_ID=1] bench/ab.sh
# BY_ID=1 names each node's target as 0xID@address (for a build whose links prove no ID).
# WORKERS sets each node's (and its plugin's) runtime worker threads: with 1, both nodes are bound
# by their CPU per task and no worker wakes another, so small changes show through the noise.
# Needs wrk and ../shared/floor/bench.lua (or FLOOR_LUA).
set -uo pipefail
cd "$(dirname "$0")/.."
A=${A:?the old build}; B=${B:-target/release/sphere}
A=$(realpath "$A"); B=$(realpath "$B")
LUA=$(realpath "${FLOOR_LUA:-../shared/floor/bench.lua}")
W=$(mktemp -d); mkdir $W/a $W/b
workers=${WORKERS:+TOKIO_WORKER_THREADS=$WORKERS}
(cd $W/a && env $workers setsid $A node --http-listen 127.0.0.1:13001 --grpc-listen 127.0.0.1:18091 >$W/a.log 2>&1 < /dev/null &)
(cd $W/b && env $workers setsid $B node --http-listen 127.0.0.1:13002 --grpc-listen 127.0.0.1:18092 >$W/b.log 2>&1 < /dev/null &)
sleep 2
apid=$(pgrep -f "grpc-listen 127.0.0.1:18091" | head -1); bpid=$(pgrep -f "grpc-listen 127.0.0.1:18092" | head -1)
target() { # REST port's last digit -> the node's own gRPC address, by ID when BY_ID is set
  local address=127.0.0.1:1809$1
  [ -n "${BY_ID:-}" ] && address=$(curl -s 127.0.0.1:1300$1/node | python3 -c 'import json,sys; print(json.load(sys.stdin)["node_id"])')@$address
  echo "$address"
}
atarget=$(target 1); btarget=$(target 2)
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
one() { # pid port c
  local t=$([ $3 = 1 ] && echo 1 || echo 2) a=$(ticks $1)
  local out=$(FLOOR_TARGET=$([ "${2: -1}" = 1 ] && echo "$atarget" || echo "$btarget") wrk -t$t -c$3 -d${DUR:-5s} -s $LUA http://127.0.0.1:$2/task | sed -n 's/^FLOOR requests=\([0-9]*\) duration_us=\([0-9]*\) p50_us=\([0-9]*\).*/\1 \2 \3/p')
  local b=$(ticks $1)
  echo "$out $((b-a))"
}
for c in 32 1; do
  one $apid 13001 $c >/dev/null; one $bpid 13002 $c >/dev/null
  for i in $(seq ${RUNS:-5}); do echo "A $c $(one $apid 13001 $c)"; echo "B $c $(one $bpid 13002 $c)"; done
done > $W/runs.txt
python3 - $W/runs.txt <<'PY'
import sys, statistics as st
rows=[l.split() for l in open(sys.argv[1])]
for c in ("32","1"):
    for s in ("A","B"):
        r=[x for x in rows if x[0]==s and x[1]==c]
        rps=[int(x[2])/int(x[3])*1e6 for x in r]; cpu=[int(x[5])*1e4/int(x[2]) for x in r]; p50=[int(x[4])/1000 for x in r]
        print(f"{s} c={c}: {st.median(rps):.0f} req/s, p50 {st.median(p50):.3f} ms, node CPU {st.median(cpu):.1f} us/task")
    a=[int(x[2])/int(x[3]) for x in rows if x[0]=="A" and x[1]==c]; b=[int(x[2])/int(x[3]) for x in rows if x[0]=="B" and x[1]==c]
    pairs=sorted(y/x for x,y in zip(a,b))
    print(f"B/A c={c}: median {st.median(pairs):.2f} (pairs {pairs[0]:.2f}-{pairs[-1]:.2f})")
PY
kill -- -$apid -$bpid 2>/dev/null
