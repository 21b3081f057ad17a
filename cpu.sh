#!/bin/bash
# usage: cpu.sh port target seconds -> per-process CPU seconds during a wrk run
port=$1; target=$2; secs=${3:-10}
snap() { for p in /proc/[0-9]*; do [ -r $p/stat ] && awk -v p=${p#/proc/} '{print p, $2, $14+$15}' $p/stat 2>/dev/null; done; }
(FLOOR_TARGET=$target wrk -t2 -c32 -d$((secs+4))s --latency -s /work/shared/floor/bench.lua http://127.0.0.1:$port/task > /tmp/prof/w_$port.txt 2>&1 &)
sleep 2; snap > /tmp/prof/a; sleep $secs; snap > /tmp/prof/b; sleep 3
join <(sort /tmp/prof/a) <(sort /tmp/prof/b) | awk -v s=$secs '{d=$5-$3; if (d>10) printf "%-25s %.2f cpu\n", $2, d/100/s}'
grep Requests/sec /tmp/prof/w_$port.txt
