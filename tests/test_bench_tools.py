"""The benchmark's measuring tools (bench/loadgen.py, bench/cpu.py, bench/peer.py) on tiny inputs:
real FAISS, real processes, real HTTP over loopback. Seconds in all."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpu, loadgen, peer  # noqa: E402

# --------------------------------------------------------------------------------------------
# peer
# --------------------------------------------------------------------------------------------


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n, d, u = 2000, 16, 12
    vectors, queries = _unit(rng, n, d), _unit(rng, u, d)
    masks = {"wide": rng.random(n) < 0.4, "narrow": rng.random(n) < 0.05}
    seen = [rng.choice(n, 40, replace=False) for _ in range(u)]
    # make sure some seen items are inside each row, and would rank high without the exclusion
    for i, q in enumerate(queries):
        for mask in masks.values():
            idx = np.flatnonzero(mask)
            seen[i] = np.union1d(seen[i], idx[np.argsort(-(vectors[idx] @ q))[:3]])
    return vectors, queries, masks, seen


@pytest.fixture(scope="module")
def faiss_peer(data):
    return peer.FaissPeer(data[0], m=16, ef_construction=100)


def test_faiss_filter_never_returns_outside_the_mask_or_seen(data, faiss_peer):
    vectors, queries, masks, seen = data
    assert faiss_peer.build_s > 0
    for mask in masks.values():
        for ef in (10, 50):
            ids, ms = faiss_peer.search(mask, queries, 10, ef, seen)
            assert len(ids) == len(queries) and ms.shape == (len(queries),) and (ms > 0).all()
            for found, excluded in zip(ids, seen):
                assert 0 < len(found) <= 10  # a filtered walk at a small ef may come back short
                assert mask[found].all()
                assert not np.isin(found, excluded).any()


def test_faiss_at_large_ef_equals_numpy_exact(data, faiss_peer):
    vectors, queries, masks, seen = data
    for mask in masks.values():
        exact, exact_ms = peer.numpy_exact(vectors, mask, queries, 10, seen)
        found, _ = faiss_peer.search(mask, queries, 10, 2000, seen)
        assert (exact_ms > 0).all()
        for f, e in zip(found, exact):
            assert np.array_equal(f, e)
        # numpy's answer is the exact one
        for q, e, excluded in zip(queries, exact, seen):
            allowed = np.setdiff1d(np.flatnonzero(mask), excluded)
            best = allowed[np.argsort(-(vectors[allowed] @ q), kind="stable")[:10]]
            assert np.array_equal(np.sort(best), np.sort(e))


def test_frontier_shape_and_recall(data, faiss_peer):
    vectors, queries, masks, seen = data
    front = peer.frontier(faiss_peer, masks, queries, seen, 10, efs=(2000, 10))
    assert set(front) == set(masks)
    for points in front.values():
        assert [p["ef"] for p in points] == [10, 2000]
        assert all(p["ms_per_query"] > 0 for p in points)
        assert points[-1]["id_recall"] == 1.0 and points[-1]["score_recall"] == pytest.approx(1.0)
        assert 0 <= points[0]["id_recall"] <= 1.0


def test_peer_ratio_picks_the_smallest_ef_reaching_the_recall():
    points = [{"ef": 300, "ms_per_query": 2.0, "id_recall": 0.95},
              {"ef": 50, "ms_per_query": 0.5, "id_recall": 0.70},
              {"ef": 100, "ms_per_query": 1.0, "id_recall": 0.90},
              {"ef": 1000, "ms_per_query": 5.0, "id_recall": 0.97}]
    assert peer.peer_ratio(6.0, 0.90, points) == (6.0, 100, True)
    assert peer.peer_ratio(6.0, 0.93, points) == (3.0, 300, True)
    assert peer.peer_ratio(6.0, 0.50, points) == (12.0, 50, True)
    ratio, ef, reached = peer.peer_ratio(10.0, 0.99, points)
    assert (ratio, ef, reached) == (2.0, 1000, False)


# --------------------------------------------------------------------------------------------
# cpu
# --------------------------------------------------------------------------------------------

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
SERVE = """import sys, subprocess, time
print('ready', flush=True)
for line in sys.stdin:
    {action}
    print('done', flush=True)
"""


def _worker(action: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(action=action)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _measure(proc: subprocess.Popen) -> cpu.CPUDelta:
    tree = cpu.ProcessCPU([proc.pid])
    before = tree.snapshot()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"
    used = tree.delta(before, tree.snapshot())
    proc.stdin.close()
    proc.wait(timeout=10)
    return used


def test_process_cpu_of_a_burning_process():
    used = _measure(_worker("exec(" + repr(BURN.format(s=0.3)) + ")"))
    assert 250 <= used.cpu_ms <= 600, used
    assert used.cpu_ms == pytest.approx(used.user_ms + used.system_ms)
    assert used.processes == 1 and used.wall_s > 0.25


def test_process_cpu_counts_a_child_that_ended_inside_the_window():
    # the root spawns a burner and reaps it: the burner is never seen alive by a snapshot, its CPU
    # arrives through the root's reaped-children times
    action = "subprocess.run([sys.executable, '-c', " + repr(BURN.format(s=0.3)) + "], check=True)"
    used = _measure(_worker(action))
    assert 250 <= used.cpu_ms <= 900, used


def test_process_cpu_of_a_sleeping_process_is_near_zero():
    used = _measure(_worker("time.sleep(0.5)"))
    assert used.wall_s >= 0.5
    assert used.cpu_ms < 50, used


def test_per_unit():
    assert cpu.per_unit(120.0, 40) == 3.0
    assert np.isnan(cpu.per_unit(1.0, 0))


# --------------------------------------------------------------------------------------------
# loadgen
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service under gunicorn

    def do_GET(self):  # noqa: N802 - http.server's name
        code = 200 if self.path.startswith("/ok") else 500
        body = b"ok" if code == 200 else b"fail"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _vegeta():
    try:
        return loadgen.ensure_vegeta()
    except loadgen.LoadgenUnavailable as exc:
        pytest.skip(f"vegeta cannot be had here: {exc}")


def _check(result: loadgen.LoadResult, generator: str) -> None:
    assert result.generator == generator
    assert result.requests == 80  # 40 rps x 2 s
    assert result.sent_rps == pytest.approx(40, rel=0.1)
    # half the targets answer 500: achieved counts successes only
    assert result.successes == 40 and result.errors == 40
    assert result.errors_by_status == {500: 40}
    assert result.achieved_rps == pytest.approx(20, rel=0.1)
    assert len(result.latencies_ms) == 40 and all(x > 0 for x in result.latencies_ms)
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert result.p95_ms == pytest.approx(float(np.percentile(result.latencies_ms, 95)))
    assert result.send_lag_p99_ms < 200  # it kept the schedule
    assert result.loadgen_cpu_s > 0
    assert result.loadgen_cpu_s == pytest.approx(result.loadgen_user_s + result.loadgen_system_s)
    assert result.to_dict()["errors_by_status"] == {"500": 40}


def test_vegeta_open_loop_against_a_local_server(server):
    binary = _vegeta()
    t0 = time.monotonic()
    result = loadgen.run_load([f"{server}/ok", f"{server}/fail"], rps=40, duration_s=2, vegeta=binary)
    assert time.monotonic() - t0 < 10
    _check(result, "vegeta")


def test_python_fallback_open_loop_against_a_local_server(server):
    result = loadgen.run_load_python([f"{server}/ok", f"{server}/fail"], rps=40, duration_s=2)
    _check(result, "python")
    # open loop: the in-process server's threads are not the generator's CPU; the generator
    # costs far less than the wall time
    assert result.loadgen_cpu_s < result.wall_s


def test_transport_errors_count_under_status_zero():
    # a port nobody listens on: every request fails to connect
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = loadgen.run_load_python([f"http://127.0.0.1:{port}/"], rps=20, duration_s=0.5, timeout_s=1)
    assert result.successes == 0 and result.errors == result.requests == 10
    assert result.errors_by_status == {0: 10}
    assert result.error_samples and np.isnan(result.p50_ms)


def test_without_vegeta_or_go_the_error_says_so_and_auto_falls_back(server, tmp_path, monkeypatch):
    monkeypatch.setattr(loadgen, "BIN_DIR", tmp_path)
    monkeypatch.setattr(loadgen.shutil, "which", lambda name: None)
    monkeypatch.setattr(loadgen, "GO_PLACES", ())
    with pytest.raises(loadgen.LoadgenUnavailable, match="Go is not installed"):
        loadgen.ensure_vegeta()
    result = loadgen.run_load_auto([f"{server}/ok"], rps=20, duration_s=0.5)
    assert result.generator == "python" and "vegeta is not at" in result.fallback_reason
    assert result.successes == result.requests == 10


def test_the_node_s_cpu_is_read_from_its_pid_found_from_its_own_report(es, es_settings):
    """Whatever started the node and wherever its home is, the benchmark finds its pid from what the node
    reports (process.id + its HTTP port, confirmed by the process listening on it) and reads the kernel's
    counters, exact at the instant; a pid that is not the node is never taken for it."""
    pids = cpu.local_node_pids(es)
    assert pids and all(p > 0 for p in pids)
    before = cpu.es_process_cpu(es)
    assert before.source == "pid" and before.exact and before.pids == pids
    for _ in range(50):
        es.search(index="*", size=0)
    assert cpu.es_process_cpu(es).cpu_ms > before.cpu_ms
    assert not cpu._listens_on(pids[0], 1) and not cpu._listens_on(1 << 30, 9200)
