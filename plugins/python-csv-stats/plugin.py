"""A Sphere plugin in Python: statistics of a CSV table.

Input: CSV text with a header row (text/csv). Output: JSON (application/json) with the number of
rows and, per column, either numeric statistics (count, min, max, mean, median) or, for text
columns, the number of distinct values and the most common one.

Run it by hand (after generating the gRPC stubs, see README.md):

    SPHERE_PLUGIN_LISTEN=127.0.0.1:50051 python3 plugin.py

or let a Sphere node start it (a `command` entry in the node's `plugins.entries`).
"""

import csv
import io
import json
import os
import signal
import statistics
import sys
import threading
from collections import Counter
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# Generated from proto/sphere/v1/plugin.proto by grpcio-tools (see README.md).
from sphere.v1 import plugin_pb2, plugin_pb2_grpc

MAX_CONCURRENCY = 8


def column_stats(values):
    """Statistics of one column: numeric when every non-empty value is a number."""
    present = [value for value in values if value.strip() != ""]
    try:
        numbers = [float(value) for value in present]
    except ValueError:
        numbers = None
    if numbers:
        return {
            "type": "number",
            "count": len(numbers),
            "min": min(numbers),
            "max": max(numbers),
            "mean": statistics.fmean(numbers),
            "median": statistics.median(numbers),
        }
    counts = Counter(present)
    most_common = counts.most_common(1)
    return {
        "type": "text",
        "count": len(present),
        "distinct": len(counts),
        "most_common": most_common[0][0] if most_common else None,
    }


class CsvStats(plugin_pb2_grpc.PluginServiceServicer):
    def Describe(self, request, context):
        return plugin_pb2.DescribeResponse(
            name="csv-stats",
            version="1.0.0",
            description="statistics of a CSV table: per-column count, min, max, mean, median",
            input_content_type="text/csv",
            output_content_type="application/json",
            max_concurrency=MAX_CONCURRENCY,
            # The same table always gives the same statistics; computing them twice does no harm.
            deterministic=True,
            idempotent=True,
        )

    def Execute(self, request, context):
        try:
            text = request.input.decode("utf-8")
        except UnicodeDecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the input must be UTF-8 CSV text")
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        if not reader.fieldnames or not rows:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the input needs a header row and at least one data row",
            )
        columns = {name: column_stats([row.get(name) or "" for row in rows]) for name in reader.fieldnames}
        output = json.dumps({"rows": len(rows), "columns": columns}, sort_keys=True)
        return plugin_pb2.ExecuteResponse(output=output.encode("utf-8"))


def main():
    listen = os.environ.get("SPHERE_PLUGIN_LISTEN", "127.0.0.1:50051")
    # gRPC refuses messages over 4 MiB by default; the node says how large tasks may be.
    max_message = int(os.environ.get("SPHERE_PLUGIN_MAX_MESSAGE_BYTES", 16 * 1024 * 1024 + 65536))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENCY),
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ],
    )
    plugin_pb2_grpc.add_PluginServiceServicer_to_server(CsvStats(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    port = server.add_insecure_port(listen)
    if port == 0:
        sys.exit(f"could not listen on {listen}")
    server.start()
    host = listen.rsplit(":", 1)[0]
    # The handshake line: tells a node that started this plugin where it listens.
    print(f"SPHERE_PLUGIN_ADDR={host}:{port}", flush=True)
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
