"""terraform/: every file parses (python-hcl2), the cluster has the production shape, nothing
exposes 9200 to the internet, and checkov finds no failed check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

TF = Path(__file__).resolve().parents[1] / "terraform"
CHECKOV = [os.path.expanduser("~/.cache/facetrec/checkov-venv/bin/checkov"), shutil.which("checkov")]


def unquote(node):
    """python-hcl2 >= 7 keeps the quotes of block labels and string literals: drop them."""
    if isinstance(node, dict):
        return {unquote(k): unquote(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unquote(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    return {path.name: unquote(hcl2.load(path.open())) for path in sorted(TF.glob("*.tf"))}


def resources(parsed, kind):
    for doc in parsed.values():
        for block in doc.get("resource", []):
            if kind in block:
                yield from block[kind].items()


def test_every_file_parses(parsed):
    assert {"versions.tf", "variables.tf", "network.tf", "security.tf", "cluster.tf", "outputs.tf"} <= set(parsed)


def test_cluster_shape(parsed):
    instances = dict(resources(parsed, "aws_instance"))
    assert instances["master"]["count"] == 3 and instances["data"]["count"] == 3 and "kibana" in instances
    for name, instance in instances.items():
        assert instance["metadata_options"][0]["http_tokens"] == "required", name
        assert instance["root_block_device"][0]["encrypted"] is True, name
    assert all(v["encrypted"] for v in instances["data"]["ebs_block_device"])
    outputs = {k for doc in parsed.values() for block in doc.get("output", []) for k in block}
    assert {"elasticsearch_url", "kibana_url", "data_node_ips", "master_node_ips"} <= outputs


def test_no_public_ingress(parsed):
    for name, rule in resources(parsed, "aws_vpc_security_group_ingress_rule"):
        assert rule.get("cidr_ipv4") not in ("0.0.0.0/0",) and rule.get("cidr_ipv6") != "::/0", name
    subnets = dict(resources(parsed, "aws_subnet"))
    assert all(s["map_public_ip_on_launch"] is False for s in subnets.values())
    variables = {k: v for doc in parsed.values() for block in doc.get("variable", []) for k, v in block.items()}
    assert "0.0.0.0/0" in json.dumps(variables["client_cidrs"]["validation"])


def test_checkov_finds_no_failed_checks():
    binary = next((b for b in CHECKOV if b and os.path.exists(b)), None)
    if binary is None:
        pytest.skip("checkov is not installed (make deps installs it into ~/.cache/facetrec/checkov-venv)")
    done = subprocess.run([binary, "-d", str(TF), "--framework", "terraform", "-o", "json", "--quiet", "--compact"],
                          capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c.get("severity")) for r in reports
              for c in r.get("results", {}).get("failed_checks", [])]
    assert failed == [], failed
