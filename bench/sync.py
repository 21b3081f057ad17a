#!/usr/bin/env python3
"""What one fdatasync costs on this disk: appending a record (as LevelDB's log does, so the
file's size changes and ext4 commits it to its journal) against overwriting one in place in a
preallocated file (only the data is synced).

Usage: bench/sync.py [DIR] [COUNT]   (defaults: target/, 3000). Prints, per sync, the wall time,
this process's CPU and the whole machine's busy CPU (from /proc/stat, so the kernel threads
that write the journal count too)."""
import os
import sys
import time

RECORD = b"x" * 200
SPAN = 1 << 20


def machine_busy_ticks():
    with open("/proc/stat") as stat:
        fields = list(map(int, stat.readline().split()[1:]))
    return sum(fields) - fields[3] - fields[4]  # less idle and iowait


def measure(directory, mode, count):
    path = os.path.join(directory, f"sync-bench-{mode}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if mode == "in-place":
            os.write(fd, b"\0" * SPAN)
            os.fsync(fd)
        busy, own, wall = machine_busy_ticks(), os.times(), time.monotonic()
        for i in range(count):
            if mode == "append":
                os.write(fd, RECORD)
            else:
                os.pwrite(fd, RECORD, (i * 4096) % SPAN)
            os.fdatasync(fd)
        wall = time.monotonic() - wall
        after = os.times()
        own = after.user - own.user + after.system - own.system
        busy = (machine_busy_ticks() - busy) / os.sysconf("SC_CLK_TCK")
        print(f"{mode:>8}: {wall / count * 1e6:4.0f} us wall, {own / count * 1e6:3.0f} us own CPU, "
              f"{busy / count * 1e6:3.0f} us machine CPU per sync")
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    for mode in ("append", "in-place", "append", "in-place"):
        measure(directory, mode, count)
