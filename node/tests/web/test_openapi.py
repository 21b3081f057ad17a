"""The REST API against its own OpenAPI description, with schemathesis: every route, generated
inputs, no failure of the node itself (500), every answer (errors included) as documented."""

import os
import subprocess

from conftest import ROOT, Node, paid_config

SCHEMATHESIS = ROOT / ".tools/venv/bin/schemathesis"
EXAMPLES = os.environ.get("SPHERE_SCHEMATHESIS_EXAMPLES", "40")


def run_schemathesis(node, token=None):
    command = [str(SCHEMATHESIS), "--config-file", str(ROOT / "node/tests/web/schemathesis.toml"),
               "run", f"{node.url}/openapi.json", "--max-examples", EXAMPLES, "--seed", "1",
               "--request-timeout", "30"]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    # A run that tested nothing would pass too: make sure every operation was exercised.
    assert "Tested: 0" not in result.stdout, result.stdout[-5000:]
    return result.stdout


def test_every_route_answers_as_documented_with_payments_off(mesh):
    requester, _providers = mesh
    output = run_schemathesis(requester)
    assert "Selected: 26/26" in output, output[-3000:]


def test_every_route_answers_as_documented_with_payments_on(chain):
    provider = Node(paid_config(chain), key=None)
    requester = Node(paid_config(chain, {"peers": [provider.grpc]}),
                     key=chain.keys[1])
    try:
        status, opened = requester.call("POST", "/channels",
                                        {"target": provider.grpc, "deposit": "0.1eth"})
        assert status == 201, opened
        run_schemathesis(requester)
    finally:
        requester.stop()
        provider.stop()
