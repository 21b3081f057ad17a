"""The mesh across network stacks: four nodes, each in a Linux network namespace of its own, joined
by veth pairs on a bridge (in a fifth namespace, so the machine's own network is untouched).
Cutting one node's link partitions the mesh; bringing it back heals it. Needs root (CI has it)
and iproute2; run by scripts/test-all after the release build.
"""

import json
import os
import subprocess
import tempfile
import time
import uuid

import pytest

SPHERE = os.environ.get("SPHERE_BIN", "target/release/sphere")
PREFIX = f"sph{os.getpid() % 10000}"
SWITCH = f"{PREFIX}-sw"
SUBNET = "10.77.0"
NODES = 4
FAILURE_TIMEOUT_MS = 3000


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Host:
    """One namespace with one node in it."""

    def __init__(self, index, data_root):
        self.index = index
        self.namespace = f"{PREFIX}-n{index}"
        self.address = f"{SUBNET}.{index}"
        self.grpc = f"{self.address}:7000"
        self.http = f"http://{self.address}:3000"
        self.veth = f"{PREFIX}v{index}"
        self.data_dir = os.path.join(data_root, f"n{index}")
        self.process = None
        self.log = None
        self.node_id = None

    def attach(self):
        ip("netns", "add", self.namespace)
        ip("-n", self.namespace, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", self.namespace, "type", "veth",
           "peer", "name", self.veth, "netns", SWITCH)
        ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", "eth0")
        ip("-n", self.namespace, "link", "set", "eth0", "up")
        ip("-n", SWITCH, "link", "set", self.veth, "master", "br0")
        ip("-n", SWITCH, "link", "set", self.veth, "up")

    def cut(self, up):
        """Brings this host's link to the switch down (a partition) or up (healed)."""
        ip("-n", SWITCH, "link", "set", self.veth, "up" if up else "down")

    def start(self, bootstrap):
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = open(os.path.join(self.data_dir, "node.log"), "w")
        command = ["ip", "netns", "exec", self.namespace, SPHERE, "node",
                   "--data-dir", self.data_dir, "--grpc-listen", self.grpc,
                   "--http-listen", f"{self.address}:3000", "--label", f"host=n{self.index}"]
        if bootstrap:
            command += ["--bootstrap", bootstrap]
        env = dict(os.environ, SPHERE_MESH__FAILURE_TIMEOUT_MS=str(FAILURE_TIMEOUT_MS),
                   SPHERE_STORAGE__AUDIT_INTERVAL_MS="1000")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_text()
            status, body = self.call("GET", "/health", token=False)
            if status == 200:
                self.node_id = body["node_id"]
                return
            time.sleep(0.2)
        raise AssertionError(f"node n{self.index} did not start:\n{self.log_text()}")

    def log_text(self):
        with open(os.path.join(self.data_dir, "node.log")) as log:
            return log.read()[-5000:]

    def call(self, method, path, body=None, token=True, raw=None):
        """A REST call from inside this host's namespace: (status, JSON body or text)."""
        command = ["ip", "netns", "exec", self.namespace, "curl", "-s", "-m", "30",
                   "-X", method, "-w", "\n%{http_code}", self.http + path]
        token_file = os.path.join(self.data_dir, "api.token")
        if token and os.path.exists(token_file):
            with open(token_file) as file:
                command += ["-H", f"Authorization: Bearer {file.read().strip()}"]
        if body is not None:
            command += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        if raw is not None:
            command += ["--data-binary", "@-"]
        result = subprocess.run(command, capture_output=True, input=raw)
        text, _, status = result.stdout.rpartition(b"\n")
        status = int(status or 0)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def peers(self):
        status, body = self.call("GET", "/peers")
        assert status == 200, body
        return {peer["id"]: peer for peer in body["peers"]}

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.log:
            self.log.close()


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.fail("the network-namespace tests need root (ip netns add)")
    data_root = tempfile.mkdtemp(prefix="sphere-netns-")
    made = [Host(index, data_root) for index in range(1, NODES + 1)]
    try:
        ip("netns", "add", SWITCH)
        ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
        ip("-n", SWITCH, "link", "set", "br0", "up")
        for host in made:
            host.attach()
        made[0].start(bootstrap=None)
        for host in made[1:]:
            host.start(bootstrap=made[0].grpc)
        yield made
    finally:
        for host in made:
            host.stop()
        for host in made:
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "netns", "del", SWITCH], capture_output=True)


def until(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


def sees(watcher, others, state):
    peers = watcher.peers()
    return all(peers.get(other.node_id, {}).get("state") == state for other in others)


def task(requester, target, text):
    return requester.call("POST", "/task", {"target": target, "input": text})


def test_a_partitioned_member_is_dead_to_the_others_work_goes_on_and_the_mesh_heals(hosts):
    first, second, third, fourth = hosts
    rest = [first, second, third]

    # Every node, in its own network stack, finds every other through the first.
    for host in hosts:
        until(lambda: sees(host, [other for other in hosts if other is not host], "alive"),
              f"n{host.index} sees every other node alive")
    print(f"members across namespaces: {[host.node_id for host in hosts]}")

    # A task by node ID and a file on two members by node ID, across the bridge.
    status, body = task(first, fourth.node_id, "hello")
    assert (status, body.get("output")) == (200, "world"), body
    content = uuid.uuid4().bytes * 5000
    status, stored = first.call(
        "PUT", f"/files/before.bin?targets={second.node_id},{fourth.node_id}", raw=content)
    assert status == 201, stored

    # Cut the fourth off: the others mark it dead, and it marks them dead.
    fourth.cut(up=False)
    took = until(lambda: all(sees(host, [fourth], "dead") for host in rest),
                 "the others see the cut-off node dead")
    print(f"a cut-off member was dead to the others after {took:.1f} s")
    until(lambda: sees(fourth, rest, "dead"), "the cut-off node sees the others dead")

    # Work goes on among the majority: tasks by node ID, the file read (its replica on the
    # fourth is unreachable, the one on the second answers), new files on live members only.
    status, body = task(first, third.node_id, "hello")
    assert (status, body.get("output")) == (200, "world"), body
    status, body = task(first, fourth.node_id, "hello")
    assert (status, body["error"]["code"]) == (502, "target_unreachable"), body
    status, read = first.call("GET", f"/files/{stored['id']}")
    assert status == 200 and read == content, (status, read[:200])
    status, during = first.call("PUT", "/files/during.bin?replicas=2", raw=b"during the cut")
    assert status == 201, during
    holders = {replica["provider_id"] for replica in during["replicas"]}
    assert holders == {second.node_id, third.node_id}, during
    # The cut-off node has no live member to store on.
    status, body = fourth.call("PUT", "/files/alone.bin?replicas=1", raw=b"alone")
    assert (status, body["error"]["code"]) == (503, "not_enough_providers"), body

    # Healed: the partition closes on its own, and the fourth takes work again.
    fourth.cut(up=True)
    took = until(lambda: all(sees(host, [other for other in hosts if other is not host], "alive")
                             for host in hosts),
                 "every node sees every other alive again", timeout=60)
    print(f"the mesh was whole again {took:.1f} s after the link came back")
    status, body = task(first, fourth.node_id, "hello")
    assert (status, body.get("output")) == (200, "world"), body
    status, body = task(fourth, first.node_id, "hello")
    assert (status, body.get("output")) == (200, "world"), body
    status, read = first.call("GET", f"/files/{stored['id']}?target={fourth.node_id}")
    assert status == 200 and read == content, (status, read[:200])
