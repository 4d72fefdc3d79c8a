"""The live recall monitor against the real node, its metric over real UDP."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid

import pytest
import yaml

from app import create_app
from app.state import service_of
from catalogs import bundled_schema
from facetrec.catalog.rows import RowCatalog
from facetrec.metrics import NoMetrics
from facetrec.serving.homepage import SearchConfig, recommend
from facetrec.serving.recall_monitor import MAX_PENDING, RecallMonitor, row_recall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_row_recall_counts_the_exact_top_found_at_the_rows_size():
    assert row_recall(["a", "b", "c"], ["a", "b", "c", "d"], 3) == 1.0
    assert row_recall(["a", "x", "y"], ["a", "b", "c"], 3) == pytest.approx(1 / 3)
    assert row_recall(["b", "a"], ["a", "b", "c"], 2) == 1.0          # order inside the top does not matter
    assert row_recall(["a"], ["a"], 10) == 1.0                         # fewer exact hits than the size
    assert row_recall(["a"], [], 10) is None


@pytest.fixture(scope="module")
def degraded(es, es_settings):
    """A deliberately degraded graph: m=2, ef_construction=2, raw inner products (no reduction) and the
    fewest candidates (num_candidates_factor 1, short walks), every row planned onto the graph (no
    exact scans however few the matches), so the unfiltered row misses most of its exact top.

    Two things keep it deterministic. The item index is force-merged to one segment: a bulk load
    spread over several write threads leaves several segments, each walked with its own candidates,
    and how many is up to the scheduler (a run with more found the whole top of a row it should
    miss). Filters go inside the walk (post_filter_min_share 1): a walk of this graph filtered
    afterwards can come back empty, which the publish's validation rightly refuses."""
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    prefix = f"rm-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="hnsw", hnsw_m=2, hnsw_ef_construction=2, mips_reduction=False,
                                   num_candidates_factor=1, exact_max_matches=0, walk_candidates=10,
                                   post_filter_min_share=1.0)
    items, users, *_ = embedding_records(n_items=3000, n_users=30, dims=64, seed=5)
    # The shipped rows, every one on the graph at the setting's candidates (no exact scans, no
    # pinned plans, no per-row factors).
    with open(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml")) as f:
        raw = yaml.safe_load(f)
    for row in raw["rows"]:
        row.pop("exact", None)
        row.pop("plan", None)
        row.pop("num_candidates_factor", None)
    catalog = RowCatalog.from_dict(raw, bundled_schema("synthetic"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version="m", progress=False, sample_users=2)
    yield settings, catalog, users
    es.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
    for template in es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}-*").get("index_templates", []):
        es.indices.delete_index_template(name=template["name"])


def recall_lines(settings, catalog, user_ids, **changes) -> list[str]:
    """Serve the users' homepages through the app with a real DogStatsD client and collect what the
    monitor sends over UDP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.5)
        app = create_app(settings.replace(statsd_host="127.0.0.1", statsd_port=listener.getsockname()[1],
                                          es_request_timeout_s=10.0, **changes), catalog)
        client = app.test_client()
        for user_id in user_ids:
            assert client.get(f"/v1/users/{user_id}/homepage").status_code == 200
            assert service_of(app).recall_monitor.drain(30)  # one page checked at a time: none dropped
        service_of(app).recall_monitor.close()
        service_of(app).metrics.flush()
        lines = []
        while True:
            try:
                lines += listener.recv(65536).decode().splitlines()
            except socket.timeout:
                break
    return [line for line in lines if line.startswith("facetrec.retrieval.recall")]


def per_row(lines: list[str]) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for line in lines:
        if not line.startswith("facetrec.retrieval.recall:"):
            continue
        value = float(line.split(":", 1)[1].split("|", 1)[0])
        tags = dict(t.split(":", 1) for t in line.split("|#", 1)[1].split(","))
        assert tags["index_type"] and tags["mode"] == "knn"
        rows.setdefault(tags["row"], []).append(value)
    return rows


def test_a_degraded_index_shows_in_retrieval_recall_and_a_healthy_one_does_not(degraded, published):
    settings, catalog, users = degraded
    lines = recall_lines(settings, catalog, [u["user_id"] for u in users[:6]], recall_sample_rate=1.0)
    rows = per_row(lines)
    assert set(rows) == set(catalog.homepage), f"one recall per knn row expected, got {sorted(rows)}"
    assert all("|d|" in line for line in lines if line.startswith("facetrec.retrieval.recall:"))
    assert all("index_type:hnsw" in line for line in lines if line.startswith("facetrec.retrieval.recall:"))
    mean = {row: sum(v) / len(v) for row, v in rows.items()}
    assert mean["for_you"] < 0.9, f"the degraded graph should miss (recall below the alert line): {mean}"

    healthy_settings, healthy_catalog, _, healthy_users, *_ = published   # flat: knn is exact
    healthy = per_row(recall_lines(healthy_settings, healthy_catalog, [u["user_id"] for u in healthy_users[:3]],
                                   recall_sample_rate=1.0))
    assert healthy and all(v == 1.0 for values in healthy.values() for v in values), healthy


def test_no_check_at_rate_zero_and_a_full_queue_drops_instead_of_waiting(es, published):
    settings, catalog, _, users, *_ = published
    assert recall_lines(settings, catalog, [users[0]["user_id"]], recall_sample_rate=0.0) == []

    class Counting(NoMetrics):
        def __init__(self):
            self.counts: dict[str, int] = {}

        def increment(self, name, tags=(), value=1):
            self.counts[name] = self.counts.get(name, 0) + value

    metrics = Counting()
    target = SearchConfig.from_settings(settings)
    monitor = RecallMonitor(es, target, metrics, 1.0, "flat", rng=random.Random(0))
    release = threading.Event()
    monitor.check = lambda *a, **k: release.wait(10)   # a stuck exact search
    pages = MAX_PENDING + 3
    started = time.perf_counter()
    for _ in range(pages):
        recommend(es, target, users[1]["user_id"], catalog.homepage_rows(), observe=monitor.observe)
    assert metrics.counts.get("retrieval.recall.dropped") == pages - MAX_PENDING
    release.set()
    monitor.close()
    assert time.perf_counter() - started < 10, "pages waited for the monitor"


def test_a_check_across_a_swap_is_skipped_not_reported_as_a_miss(es, published):
    settings, catalog, _, users, *_ = published
    reported = []

    class Recording(NoMetrics):
        def distribution(self, name, value, tags=()):
            reported.append((name, value))

        def increment(self, name, tags=(), value=1):
            reported.append((name, list(tags)))

    target = SearchConfig.from_settings(settings)
    seen = []
    recommend(es, target, users[2]["user_id"], catalog.homepage_rows()[:1], observe=lambda *a: seen.append(a))
    user, rows, filters, mode, sizes, responses, interests = seen[0]
    assert interests == {}   # a one-vector user: every row with the current interest
    for hit in responses[0]["hits"]["hits"]:
        hit["_source"]["generation"] = "20990101-000000"   # served by another generation than the exact answer's
    assert RecallMonitor(es, target, Recording(), 1.0, "flat").check(user, rows, filters, mode, sizes, responses) == {}
    assert reported == [("retrieval.recall.skipped", [f"row:{rows[0].id}", "reason:generation_changed"])]
