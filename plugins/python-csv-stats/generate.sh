#!/usr/bin/env bash
# Generates the Python gRPC stubs of proto/sphere/v1/plugin.proto next to plugin.py.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m grpc_tools.protoc -I ../../proto --python_out=. --grpc_python_out=. \
  ../../proto/sphere/v1/plugin.proto
