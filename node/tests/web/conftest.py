"""Real Sphere nodes, and a real chain, for the tests of this folder: the REST API against its
OpenAPI description (schemathesis) and the dashboard in a real browser (Chromium).

The nodes are the release binary (`SPHERE_BIN`, by default target/release/sphere) on 127.0.0.1
with port 0; anvil comes from .tools (scripts/test-all installs it)."""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SPHERE = os.environ.get("SPHERE_BIN", str(ROOT / "target/release/sphere"))
ANVIL = ROOT / ".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
ARTIFACTS = pathlib.Path(os.environ.get("SPHERE_WEB_ARTIFACTS", ROOT / "target/web-artifacts"))
READY = re.compile(r"sphere node (0x[0-9a-fA-F]{40}) ready: grpc=(\S+) http=(\S+)")


class Node:
    """A `sphere node` process with its own data directory."""

    def __init__(self, config=None, key=None, args=()):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sphere-web-"))
        config_file = self.dir / "config.json"
        config_file.write_text(json.dumps(config or {}))
        command = [SPHERE, "node", "--data-dir", str(self.dir / "data"), "--config",
                   str(config_file), "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", *args]
        if key is not None:
            key_file = self.dir / "node.key"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            command += ["--key-file", str(key_file)]
        self.log = open(self.dir / "node.log", "w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.process.stdout.readline()
        match = READY.search(line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the node did not start: {line!r}\n{(self.dir / 'node.log').read_text()}")
        self.node_id, self.grpc, http = match.groups()
        self.url = f"http://{http}"

    def token(self):
        return (self.dir / "data" / "api.token").read_text().strip()

    def call(self, method, path, body=None, token=None):
        """Returns (status, JSON answer) of a REST call."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(condition, timeout=30, what="the condition"):
    """Polls `condition` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def start_demo_plugin(port):
    """Starts `sphere demo-plugin` on `port` by itself, as someone else's plugin would run."""
    plugin = subprocess.Popen([SPHERE, "demo-plugin"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "SPHERE_PLUGIN_LISTEN": f"127.0.0.1:{port}"})
    plugin.stdout.readline()  # the plugin announces its address once it listens
    return plugin


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mesh():
    """A requester node whose peers are two provider nodes."""
    providers = [Node(), Node()]
    requester = Node({"peers": [provider.grpc for provider in providers],
                      "storage": {"audit_interval_ms": 1000}})
    yield requester, providers
    for node in [requester, *providers]:
        node.stop()


class Chain:
    """A local anvil chain with the payment contract deployed."""

    def __init__(self, rpc_url, contract, keys):
        self.rpc_url = rpc_url
        self.contract = contract
        # Private keys of anvil's funded development accounts, as it printed them.
        self.keys = keys


@pytest.fixture(scope="module")
def chain():
    """A local anvil chain with the payment contract."""
    if not ANVIL.exists():
        pytest.fail("anvil is missing: run scripts/test-all, which installs it")
    port = free_port()
    anvil = subprocess.Popen([str(ANVIL), "--port", str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    rpc_url = f"http://127.0.0.1:{port}"
    keys = []
    for line in anvil.stdout:
        keys += re.findall(r"^\(\d+\) 0x([0-9a-f]{64})$", line.strip())
        if "Listening on" in line:
            break
    assert len(keys) >= 3, "anvil printed no funded keys"
    key_dir = pathlib.Path(tempfile.mkdtemp(prefix="sphere-web-chain-"))
    key_file = key_dir / "deployer.key"
    key_file.write_text(keys[0] + "\n")
    key_file.chmod(0o600)
    deployed = subprocess.run([SPHERE, "payments", "deploy", "--rpc-url", rpc_url, "--key-file",
                               str(key_file), "--challenge-period-seconds", "600"],
                              capture_output=True, text=True, check=True)
    yield Chain(rpc_url, deployed.stdout.strip(), keys)
    anvil.terminate()
    anvil.wait(timeout=10)
    shutil.rmtree(key_dir, ignore_errors=True)


def paid_config(chain, extra=None):
    config = {"payments": {"enabled": True, "rpc_url": chain.rpc_url, "chain_id": 31337,
                           "contract": chain.contract, "prices": {"task_wei": 1000}}}
    config.update(extra or {})
    return config
