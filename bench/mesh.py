#!/usr/bin/env python3
"""Mesh benchmark: N nodes on loopback, each bootstrapped from the first.

Reports, per N: how long until every node lists every other alive (counted from the moment
every process is up), and the gossip each node sends and receives per second once converged
(`sphere_gossip_bytes_total`), mean and highest. Run through bench/mesh.sh.
"""

import collections
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

SPHERE = os.environ.get("SPHERE_BIN", "target/release/sphere")
MEASURE_SECONDS = float(os.environ.get("MEASURE_SECONDS", "20"))
# mesh.* settings for every node, as JSON (e.g. '{"gossip_interval_ms": 1000}').
MESH = json.loads(os.environ.get("MESH", "{}"))


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def start(work, name, bootstrap):
    data = os.path.join(work, name)
    os.makedirs(data)
    config = os.path.join(data, "config.json")
    with open(config, "w") as file:
        # No plugin: membership is what is measured.
        json.dump({"plugins": {"entries": []}, "mesh": {**MESH, "bootstrap": bootstrap}}, file)
    out = open(os.path.join(data, "out"), "w+")
    process = subprocess.Popen(
        [SPHERE, "node", "--config", config, "--data-dir", data, "--log", "warn",
         "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=out, stderr=open(os.path.join(data, "err"), "w"),
    )
    return process, out


def ready(out):
    out.seek(0)
    line = out.readline()
    match = re.search(r"ready: grpc=(\S+) http=(\S+)", line)
    return match and (match.group(1), match.group(2))


def counts(https, pool, states):
    """Per node, how many peers it lists in one of `states`."""
    def count(http):
        try:
            peers = json.loads(get(f"http://{http}/peers"))["peers"]
        except Exception:
            return 0
        return sum(1 for peer in peers if peer["state"] in states)
    return list(pool.map(count, https))


def gossip_bytes(https, pool):
    """Per node: bytes by direction, and sent bytes by message kind ("sent syn", ...)."""
    def scrape(http):
        totals = collections.Counter({"sent": 0.0, "received": 0.0})
        for line in get(f"http://{http}/metrics").splitlines():
            match = re.match(r'sphere_gossip_bytes_total\{(.*)\} (\S+)', line)
            if match:
                labels = dict(re.findall(r'(\w+)="(\w+)"', match.group(1)))
                totals[labels["direction"]] += float(match.group(2))
                totals[f'{labels["direction"]} {labels.get("message")}'] += float(match.group(2))
        return totals
    return list(pool.map(scrape, https))


def run(n, work):
    processes = []
    try:
        seed, seed_out = start(work, "node0", [])
        processes.append(seed)
        while not ready(seed_out):
            time.sleep(0.02)
        seed_grpc, seed_http = ready(seed_out)
        outs = [seed_out]
        for index in range(1, n):
            process, out = start(work, f"node{index}", [seed_grpc])
            processes.append(process)
            outs.append(out)
        deadline = time.time() + 120
        while not all(ready(out) for out in outs):
            if time.time() > deadline:
                sys.exit("nodes did not start within 120 s")
            time.sleep(0.02)
        everyone_up = time.time()
        https = [ready(out)[1] for out in outs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            while True:
                alive = counts(https, pool, ("alive",))
                if min(alive) == n - 1:
                    converged = time.time() - everyone_up
                    break
                if time.time() - everyone_up > 120:
                    sys.exit(f"not converged after 120 s: {sorted(alive)[:5]} ...")
                time.sleep(0.1)
            before = gossip_bytes(https, pool)
            started = time.time()
            time.sleep(MEASURE_SECONDS)
            after = gossip_bytes(https, pool)
            elapsed = time.time() - started
            # Still every member alive (or, late by a round, suspect) for every node: no false
            # deaths at this rate.
            steady = min(counts(https, pool, ("alive", "suspect"))) == n - 1
        rates = {
            direction: [(a[direction] - b[direction]) / elapsed / 1024 for a, b in zip(after, before)]
            for direction in ("sent", "received")
        }
        print(f"| {n} | {converged:.1f} s | "
              f"{sum(rates['sent']) / n:.1f} / {max(rates['sent']):.1f} | "
              f"{sum(rates['received']) / n:.1f} / {max(rates['received']):.1f} | "
              f"{'yes' if steady else 'NO'} |", flush=True)
        kinds = sorted({key for totals in after for key in totals if key.startswith("sent ")})
        split = ", ".join(
            f"{kind.removeprefix('sent ')} {sum(a[kind] - b[kind] for a, b in zip(after, before)) / elapsed / 1024 / n:.1f}"
            for kind in kinds)
        print(f"  sent per node by message, KiB/s: {split}", file=sys.stderr, flush=True)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def main():
    sizes = [int(size) for size in sys.argv[1:]] or [10, 50, 100]
    print(f"mesh settings: {MESH or 'defaults'}")
    print("| nodes | converged after | gossip sent, KiB/s per node (mean / max) | received (mean / max) | none dead after |")
    print("|---:|---:|---:|---:|---|")
    for n in sizes:
        work = tempfile.mkdtemp(prefix="sphere-mesh-bench-", dir=os.environ.get("BENCH_DIR", "target"))
        try:
            run(n, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
