"""A plugin that misbehaves on request, for the node's integration tests.

Its input says what to do:
  sleep:<ms>   sleep, then answer "slept"
  exit         exit the process in the middle of the task
  garbage      answer bytes that are not a valid ExecuteResponse
  big:<n>      answer n bytes
  reject       refuse the input (INVALID_ARGUMENT)
  pid          answer its process ID
  say:<text>   print <text> on stderr and answer "said"
  anything else is echoed.
Environment: PLUGIN_NAME (the name it describes itself with, default "misbehaving"),
HEALTH_FILE (a file whose content, SERVING or NOT_SERVING, sets its health status, polled every
50 ms), MAX_CONCURRENCY (its own concurrency limit in Describe, default 0), MAX_WORKERS (threads serving
every call, health checks included, default 16), PURE (when "1", it declares itself deterministic
and idempotent), LIE (when "1", it answers "not <input>" where it would echo).
"""

import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sphere.v1 import plugin_pb2

GARBAGE = b"\xff\xff\xff\xff\xff"


def execute(request, context):
    command = request.input.decode("utf-8", errors="replace")
    if command.startswith("sleep:"):
        time.sleep(int(command.split(":", 1)[1]) / 1000)
        return plugin_pb2.ExecuteResponse(output=b"slept")
    if command == "exit":
        os._exit(3)
    if command == "garbage":
        return GARBAGE
    if command.startswith("big:"):
        return plugin_pb2.ExecuteResponse(output=b"x" * int(command.split(":", 1)[1]))
    if command == "reject":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "this input is refused on purpose")
    if command.startswith("say:"):
        print(command.split(":", 1)[1], file=sys.stderr, flush=True)
        return plugin_pb2.ExecuteResponse(output=b"said")
    if command == "pid":
        return plugin_pb2.ExecuteResponse(output=str(os.getpid()).encode())
    if os.environ.get("LIE") == "1":
        return plugin_pb2.ExecuteResponse(output=b"not " + request.input)
    return plugin_pb2.ExecuteResponse(output=request.input)


def describe(request, context):
    return plugin_pb2.DescribeResponse(
        name=os.environ.get("PLUGIN_NAME", "misbehaving"),
        version="0.0.1",
        description="misbehaves on request, for tests",
        max_concurrency=int(os.environ.get("MAX_CONCURRENCY", "0")),
        deterministic=os.environ.get("PURE") == "1",
        idempotent=os.environ.get("PURE") == "1",
    )


def serialize_execute(response):
    # Garbage goes out as raw bytes; real answers are serialised normally.
    return response if isinstance(response, bytes) else response.SerializeToString()


def follow_health_file(servicer, path, stop):
    last = None
    while not stop.is_set():
        try:
            with open(path) as file:
                wanted = file.read().strip()
        except OSError:
            wanted = "SERVING"
        # A file caught half-written reads as something else: keep the last status then.
        if wanted != last and wanted in ("SERVING", "NOT_SERVING"):
            status = health_pb2.HealthCheckResponse.ServingStatus.Value(wanted)
            servicer.set("", status)
            last = wanted
        time.sleep(0.05)


def main():
    listen = os.environ.get("SPHERE_PLUGIN_LISTEN", "127.0.0.1:0")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=int(os.environ.get("MAX_WORKERS", "16"))))
    handlers = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            execute,
            request_deserializer=plugin_pb2.ExecuteRequest.FromString,
            response_serializer=serialize_execute,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            describe,
            request_deserializer=plugin_pb2.DescribeRequest.FromString,
            response_serializer=plugin_pb2.DescribeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("sphere.v1.PluginService", handlers),))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = server.add_insecure_port(listen)
    server.start()
    if os.environ.get("HEALTH_FILE"):
        threading.Thread(target=follow_health_file, args=(servicer, os.environ["HEALTH_FILE"], stop), daemon=True).start()
    print(f"SPHERE_PLUGIN_ADDR={listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
