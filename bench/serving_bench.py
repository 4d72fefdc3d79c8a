"""Homepage serving at scale: where every core goes, recall per row, and a peer on the same vectors.

    python bench/serving_bench.py --items 1000000 --users 2000 --rps 50 --duration 60 --json results.json
    python bench/serving_bench.py --items 1000000 --reuse ...          # serve the bench-* pair already loaded
    python bench/serving_bench.py --items 200000 --full-rank 1.0 ...   # the same catalog on full-rank vectors

One configuration, the shipped one (settings from the environment, ``catalogs/synthetic/rows.yaml``), the 6-row
homepage with the user filters ``language=en&country=US``:

1. publish (unless ``--reuse``) as the nightly job does (``run_reindex`` with the settings' segment
   policy, ``FACETREC_ITEM_SEGMENTS``), ``--builds`` times (recall is the worst row of the builds):
   seconds (the merge included), item docs/s, index bytes, segments per index, the vector partitions;
2. the service under gunicorn (``FACETREC_WORKERS`` workers); ``--warmup`` pages through it (the
   node's JIT needs more than a few hundred);
3. sequential pages (``--sequential``): CPU milliseconds per homepage of the node, the service's
   gunicorn processes and this client, from the operating system's counters (the node: its pid,
   found from the node's own report, whenever it runs on this machine; else ``_nodes/stats``, and
   then no per-row figure: ``cpu_source``), the service's p50 against the same user GET +
   ``_msearch`` sent directly (the overhead ratio), Elasticsearch's ``took`` per page; then each
   row asked alone as the page plans it (its plan, its Elasticsearch CPU per request);
4. load (``--rps`` for ``--duration`` s): an open-loop generator (vegeta, ``bench/loadgen.py``):
   achieved rps, p50/p95/p99, errors, and CPU ms per homepage of node, service and generator;
5. quality: id recall@size and score recall per row as the page asks it (the planner's searches,
   the shared one split per row), against numpy's exact answer under the same filters;
6. peer (``bench/peer.py``): FAISS ``IndexHNSWFlat`` on the same stored vectors (the generation's m
   and ef_construction) with the row's filter inside the walk, for the same users, at several
   ``efSearch``; ``peer_ratio`` per row = the row's Elasticsearch CPU over FAISS's at the smallest
   ef whose recall is at least the row's (``peer_reached`` false: none reached it, the largest ef
   tried is used); numpy's exact scan as the limit;
7. ``--plots``: the recall-cost frontier and the latency of this run as PNGs under ``docs/``.

``--json`` keeps the keys of earlier versions (index_type, mode, achieved_rps, p50_ms, p95_ms,
p99_ms, errors, service_p50_ms, direct_p50_ms, overhead_ratio, es_took_p50_ms, rows: match_fraction,
id_recall, score_recall, search, took_p50_ms) and adds es_cpu_ms_per_homepage,
service_cpu_ms_per_homepage, loadgen_cpu_ms_per_homepage, client_cpu_ms_per_homepage, the load's
CPU per homepage, cpu_source, segments (per index), builds, and per row plan, es_cpu_ms, peer_ratio,
peer_ef, peer_reached, the peer's frontier and id_recall_builds / score_recall_builds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.server import start_gunicorn  # noqa: E402
from facetrec.catalog.counts import StatsCache  # noqa: E402
from facetrec.catalog.rows import RowCatalog  # noqa: E402
from facetrec.es import make_client, resolve_url, script_lang  # noqa: E402
from facetrec.local.node import port_is_free  # noqa: E402
from facetrec.serving import mips  # noqa: E402
from facetrec.serving.homepage import SearchConfig, fetch_user, pair_stats, recommend  # noqa: E402
from facetrec.serving.page_search import build_page_search  # noqa: E402
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT  # noqa: E402
from facetrec.settings import RETRIEVAL_MODES, Settings
from ingest.embedding.synthetic import embedding_records  # noqa: E402
from ingest.indexing.reindex import run_reindex  # noqa: E402

USER_FILTER = "language=en&country=US"
USER_CLAUSES = [{"term": {"language": "en"}}, {"term": {"country": "US"}}]
PEER_EFS = (50, 100, 300, 1000, 3000)


def row_predicates():
    return {
        "for_you": lambda r: True,
        "audiobooks": lambda r: r["item_format"] == "audiobook",
        "ebooks": lambda r: r["item_format"] == "ebook",
        "podcasts": lambda r: r["item_format"] == "podcast",
        "comedy": lambda r: "comedy" in r["categories"] and r["item_format"] != "document",
        "new_releases": lambda r: date.fromisoformat(r["published_at"]) >= date(2015, 1, 1),
    }


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


ROWS_CONFIG = REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml"


def bench_rows_config() -> Path:
    """The row config (catalogs/synthetic/rows.yaml unless --rows) with every mode open to callers on every row
    (the bench may ask for a mode on the whole homepage; the shipped config allows callers only the
    rows' own modes)."""
    raw = yaml.safe_load(Path(ROWS_CONFIG).read_text())
    raw["caller_modes"] = list(RETRIEVAL_MODES)
    for row in raw["rows"]:
        row.pop("caller_modes", None)
    path = Path(tempfile.mkdtemp(prefix="facetrec-bench-")) / "rows.yaml"
    path.write_text(yaml.safe_dump(raw))
    shutil.copy(Path(ROWS_CONFIG).parent / "catalog.yaml", path.parent)   # its catalog schema, beside it
    return path


def start_service(settings: Settings, port: int) -> subprocess.Popen:
    return start_gunicorn({"ES_URL": resolve_url(settings), "FACETREC_ITEM_ALIAS": settings.item_alias,
                           "FACETREC_USER_ALIAS": settings.user_alias,
                           "FACETREC_ROWS_CONFIG": str(bench_rows_config()),
                           "FACETREC_WORKERS": os.environ.get("FACETREC_WORKERS", "2"),
                           "FACETREC_THREADS": os.environ.get("FACETREC_THREADS", "8"),
                           "FACETREC_LOG_LEVEL": "warning", "ES_REQUEST_TIMEOUT_S": "2",
                           "FACETREC_RECALL_SAMPLE_RATE": "0"}, f"127.0.0.1:{port}")


def http_get(url: "str | urllib.request.Request") -> tuple[float, int]:
    """(latency ms, status; 0 when no answer) of one request (a URL: GET)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return (time.perf_counter() - started) * 1000, status


def homepage_url(base: str, user_id: str, mode: str | None = None) -> str:
    return f"{base}/v1/users/{user_id}/homepage?{USER_FILTER}" + (f"&mode={mode}" if mode else "")


class ExactRows:
    """Exact per-row answers in numpy: row masks under the user filters, computed once."""

    def __init__(self, catalog: RowCatalog, items: list[dict], item_vectors: np.ndarray):
        preds = row_predicates()
        self.item_ids = np.array([r["item_id"] for r in items])
        self.position = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.vectors = np.asarray(item_vectors, dtype=np.float32)
        base = np.array([r["language"] == "en" and "US" in r["country"] for r in items])
        self.masks = {row.id: base & np.array([preds[row.id](r) for r in items]) for row in catalog.homepage_rows()}

    def seen_positions(self, seen: list[str]) -> np.ndarray:
        return np.array([self.position[s] for s in seen if s in self.position], dtype=np.int64)

    def top(self, row_id: str, user_vector: np.ndarray, seen: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``size`` (positions, dot products) of a row, seen items excluded."""
        mask = self.masks[row_id].copy()
        mask[self.seen_positions(seen)] = False
        idx = np.flatnonzero(mask)
        scores = self.vectors[idx] @ user_vector
        best = np.argsort(-scores, kind="stable")[:size]
        return idx[best], scores[best]

    def recall(self, row_id: str, user_vector: np.ndarray, seen: list[str], size: int,
               got: list[str]) -> tuple[float, float]:
        """(id recall, score recall) of the ids ``got`` for a row of ``size``: the share of the exact
        top-size ids returned, and the sum of the returned items' true dot products over the exact
        top's (nan when that sum is not positive). A short answer counts against both."""
        top_idx, top_scores = self.top(row_id, user_vector, seen, size)
        id_recall = len(set(self.item_ids[top_idx]) & set(got)) / max(len(top_idx), 1)
        best = float(top_scores.sum())
        got_sum = sum(float(self.vectors[self.position[g]] @ user_vector) for g in got)
        return id_recall, (got_sum / best if best > 0 else float("nan"))


# --------------------------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------------------------

class Cores:
    """CPU ms of the node, the service (gunicorn master + workers) and this process, from the
    operating system's counters. The node is read from its pid(s) whenever it runs on this machine,
    found from the node's own report whatever started it (``cpu.local_node_pids``); only a node
    elsewhere is read from node stats, which Elasticsearch refreshes about once a second: ``exact``
    False, and then no figure of a short window (a row asked alone) is reported."""

    def __init__(self, es, service_pid: int):
        from cpu import ProcessCPU, es_process_cpu, local_node_pids

        self.es = es
        self.node_pids = local_node_pids(es)
        self._node = lambda: es_process_cpu(es, self.node_pids)
        self.node_source = self._node().source
        self.exact = self.node_source == "pid"
        self.service = ProcessCPU([service_pid], include_children=True)
        self.client = ProcessCPU([os.getpid()], include_children=False)

    def describe(self) -> str:
        return (f"node CPU from the pid(s) {', '.join(map(str, self.node_pids))} (the kernel's counters)" if self.exact
                else "node CPU from _nodes/stats (refreshed ~1/s: per-row figures are not reported)")

    def snapshot(self) -> dict:
        return {"node": self._node(), "service": self.service.snapshot(), "client": self.client.snapshot()}

    def delta(self, before: dict, after: dict) -> dict:
        from cpu import ProcessCPU

        if before["node"].source != after["node"].source:
            raise RuntimeError("the node's CPU was read from two sources in one window")
        return {"node": after["node"].cpu_ms - before["node"].cpu_ms,
                "service": ProcessCPU.delta(before["service"], after["service"]).cpu_ms,
                "client": ProcessCPU.delta(before["client"], after["client"]).cpu_ms}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def page_searches(es, target: SearchConfig, catalog: RowCatalog, user_id: str, rows=None):
    """The user GET and the page's planned searches, as the service builds them."""
    user = fetch_user(es, target.user_index, user_id, 5.0)
    page = build_page_search(rows or catalog.homepage_rows(), user, USER_CLAUSES, target, script_lang=script_lang(es),
                             stats=pair_stats(es, target, user))
    return user, page


def sequential(base: str, es, target: SearchConfig, catalog: RowCatalog, users: list[str], n: int, cores: Cores) -> dict:
    """CPU per homepage over n sequential pages through the service; then the same pages sent
    directly (user GET + _msearch with the same bodies) for the overhead ratio and took."""
    before = cores.snapshot()
    started = time.perf_counter()
    service = [http_get(homepage_url(base, users[i % len(users)]))[0] for i in range(n)]
    wall = time.perf_counter() - started
    used = cores.delta(before, cores.snapshot())
    direct, took = [], []
    for i in range(n):
        t0 = time.perf_counter()
        _, page = page_searches(es, target, catalog, users[i % len(users)])
        result = es.msearch(searches=page.lines)
        direct.append((time.perf_counter() - t0) * 1000)
        took.append(result["took"])
    return {"service_p50": pct(service, 50), "direct_p50": pct(direct, 50), "took_p50": pct(took, 50),
            "es_cpu": used["node"] / n, "service_cpu": used["service"] / n, "client_cpu": used["client"] / n,
            "pages_per_s": n / wall}


def rows_alone(es, target: SearchConfig, catalog: RowCatalog, users: list[str], n: int, cores: Cores) -> dict:
    """Each homepage row asked alone as the page plans it, n users: its plan, took p50 and the node's
    CPU ms per request (a shared row alone is a shared search of one bucket)."""
    out = {}
    for row in catalog.homepage_rows():
        pages = [page_searches(es, target, catalog, users[i % len(users)], rows=[row])[1] for i in range(n)]
        for page in pages[:20]:                      # warm this row's bodies
            es.msearch(searches=page.lines)
        before = cores.snapshot()
        took = [es.msearch(searches=page.lines)["took"] for page in pages]
        used = cores.delta(before, cores.snapshot())
        # A row's window is a second or two: node stats (refreshed ~1/s) cannot measure it.
        out[row.id] = {"plan": pages[0].rows[0].plan, "took_p50_ms": pct(took, 50),
                       "es_cpu_ms": used["node"] / n if cores.exact else None}
    return out


def quality(es, target: SearchConfig, catalog: RowCatalog, exact: ExactRows, users, user_vectors, n_users: int) -> dict:
    """Recall per row as the page asks it (the planner's searches; a later row has its larger k for
    cross-row backfill), each row's first ``size`` hits before de-duplication against its exact top."""
    rows = catalog.homepage_rows()
    id_recalls: dict[str, list] = {row.id: [] for row in rows}
    score_recalls: dict[str, list] = {row.id: [] for row in rows}
    plans: dict[str, set] = {row.id: set() for row in rows}
    for u in range(n_users):
        _, page = page_searches(es, target, catalog, users[u]["user_id"])
        for row, searched, response in zip(rows, page.rows, page.split(es.msearch(searches=page.lines)["responses"])):
            got = [h["_id"] for h in response["hits"]["hits"][:row.size]]
            id_recall, score_recall = exact.recall(row.id, user_vectors[u], users[u]["seen_item_ids"], row.size, got)
            id_recalls[row.id].append(id_recall)
            score_recalls[row.id].append(score_recall)
            plans[row.id].add(searched.plan)
    # The same users' pages as served (cross-row de-duplication, backfill): how often a row shows
    # fewer items than its size (every row here matches thousands of items).
    short = {row.id: 0 for row in rows}
    for u in range(n_users):
        page = recommend(es, target, users[u]["user_id"], rows, USER_CLAUSES)
        for row, served in zip(rows, page["rows"]):
            short[row.id] += len(served["items"]) < row.size
    return {row.id: {"match_fraction": float(exact.masks[row.id].mean()), "id_recall": float(np.mean(id_recalls[row.id])),
                     "score_recall": float(np.nanmean(score_recalls[row.id])), "plan": "+".join(sorted(plans[row.id])),
                     "search": "+".join(sorted(plans[row.id])), "short_share": short[row.id] / n_users}
            for row in rows}


def peer(items_stored: np.ndarray, exact: ExactRows, users, user_vectors, n_users: int, m: int, ef_construction: int,
         rows: list[str]) -> dict:
    """FAISS HNSW with the row filter inside the walk, and numpy's exact scan, on the same stored
    vectors, row masks (user filters included) and users (seen items excluded)."""
    from peer import FaissPeer, frontier, numpy_exact

    queries = np.stack([np.asarray(mips.knn_query(user_vectors[u]), np.float32) for u in range(n_users)])
    seen = [exact.seen_positions(users[u]["seen_item_ids"]) for u in range(n_users)]
    started = time.perf_counter()
    faiss_peer = FaissPeer(items_stored, m=m, ef_construction=ef_construction, threads=1)
    build_s = time.perf_counter() - started
    masks = {row: exact.masks[row] for row in rows}
    truth, numpy_ms = {}, {}
    for row in rows:
        truth[row], per_query = numpy_exact(items_stored, masks[row], queries, 10, seen)
        numpy_ms[row] = float(np.mean(per_query))
    curves = frontier(faiss_peer, masks, queries, seen, k=10, efs=PEER_EFS, truth=truth)
    return {"build_s": build_s, "frontier": curves, "numpy_exact_ms": numpy_ms}


def load(base: str, users: list[str], rps: float, duration: float, cores: Cores) -> dict:
    from loadgen import run_load_auto

    urls = [homepage_url(base, u) for u in users]
    before = cores.snapshot()
    result = run_load_auto(urls, rps=rps, duration_s=duration, timeout_s=5)
    used = cores.delta(before, cores.snapshot())
    served = max(result.requests, 1)
    return {"requests": result.requests, "offered_rps": rps, "rps": result.achieved_rps, "p50": result.p50_ms,
            "p95": result.p95_ms, "p99": result.p99_ms, "errors": result.errors, "generator": result.generator,
            "send_lag_p99_ms": result.send_lag_p99_ms, "es_cpu": used["node"] / served,
            "service_cpu": used["service"] / served, "loadgen_cpu": result.loadgen_cpu_s * 1000 / served,
            "latencies": list(result.latencies_ms)}


def segment_counts(es, settings: Settings) -> dict[str, int]:
    """Segments of the live item and user index (a walk visits each segment's graph)."""
    return {family: len(es.cat.segments(index=alias, format="json"))
            for family, alias in (("item", settings.item_alias), ("user", settings.user_alias))}


def index_bytes(es, alias: str) -> int:
    stats = es.indices.stats(index=alias, metric="store")
    return int(stats["_all"]["primaries"]["store"]["size_in_bytes"])


# --------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--full-rank", type=float, default=0.0,
                        help="add isotropic noise of this relative size to every vector (full-rank variant)")
    parser.add_argument("--rps", type=float, default=50)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--warmup", type=int, default=1000, help="pages through the service before measuring")
    parser.add_argument("--sequential", type=int, default=300, help="sequential pages for CPU per homepage")
    parser.add_argument("--row-requests", type=int, default=100, help="requests per row asked alone")
    parser.add_argument("--quality-users", type=int, default=50)
    parser.add_argument("--no-peer", action="store_true", help="skip the FAISS / numpy peer")
    parser.add_argument("--no-load", action="store_true", help="skip the load run")
    parser.add_argument("--plots", action="store_true", help="write the frontier and latency PNGs under docs/")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--reuse", action="store_true", help="serve the bench-* pair already loaded (same --items)")
    parser.add_argument("--builds", type=int, default=2,
                        help="graph builds whose recall is measured (the worst row of any is reported; the last is served)")
    parser.add_argument("--rows", type=Path, default=ROWS_CONFIG,
                        help="the row config to serve (default catalogs/synthetic/rows.yaml; the same six row ids)")
    args = parser.parse_args()
    globals()["ROWS_CONFIG"] = args.rows
    command = f"python bench/serving_bench.py {' '.join(sys.argv[1:])}"

    base_settings = Settings.from_env()
    settings = base_settings.replace(item_alias="bench-fr-item_index" if args.full_rank else "bench-item_index",
                                     user_alias="bench-fr-user_index" if args.full_rank else "bench-user_index")
    catalog = RowCatalog.load(args.rows)
    started = time.perf_counter()
    items, users, item_vectors, user_vectors = embedding_records(args.items, args.users, dims=64, seed=1,
                                                                 full_rank=args.full_rank)
    print(f"generated {args.items:,} items and {args.users:,} users in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    exact = ExactRows(catalog, items, item_vectors)
    es = make_client(settings, request_timeout=3600)
    publish: dict = {}
    target = SearchConfig.from_settings(settings, request_timeout_s=5.0,
                                        stats=StatsCache(list(catalog.rows.values()), catalog.user_filters))
    builds: list[dict] = []   # each graph build's recall per row (HNSW recall moves from build to build)
    if args.reuse:
        live = es.count(index=settings.item_alias)["count"]
        if live != len(items):
            raise SystemExit(f"--reuse: {settings.item_alias} holds {live:,} items, not {len(items):,}")
    else:
        es.indices.delete(index=f"{settings.item_alias}-*,{settings.user_alias}-*", ignore_unavailable=True)
    for build in range(args.builds):
        if build or not args.reuse:   # as the nightly job publishes: run_reindex, the settings' segment policy
            started = time.perf_counter()
            published = run_reindex(es, settings, catalog, items=items, users=users, model_version="bench",
                                    sample_users=5, expected_items=len(items), expected_users=len(users))
            publish = {"publish_s": time.perf_counter() - started,
                       "item_docs_per_s": published["docs_per_s"].get("item")}
        if args.builds > 1:
            builds.append(quality(es, target, catalog, exact, users, user_vectors, args.quality_users))
            print(f"build {build + 1}: id recall " + ", ".join(f"{r} {q['id_recall']:.3f}" for r, q in builds[-1].items()),
                  file=sys.stderr)
    item_index = next(iter(es.indices.get_alias(name=settings.item_alias)))
    meta = es.indices.get_mapping(index=item_index)[item_index]["mappings"]["_meta"]
    publish.update(index_bytes=index_bytes(es, settings.item_alias), generation=meta.get("generation"),
                   segments=segment_counts(es, settings),
                   partitions={f: {v: e["docs"] for v, e in vs.items()} for f, vs in (meta.get("partitions") or {}).items()})

    port = next(p for p in range(18000, 18100) if port_is_free(p))
    proc = start_service(settings, port)
    base = f"http://127.0.0.1:{port}"
    user_ids = [u["user_id"] for u in users]
    result: dict = {"index_type": settings.index_type, "mode": "knn", "full_rank": args.full_rank}
    try:
        cores = Cores(es, proc.pid)
        print(cores.describe(), file=sys.stderr)
        result["cpu_source"] = cores.node_source
        for i in range(args.warmup):
            http_get(homepage_url(base, user_ids[i % len(user_ids)]))
        seq = sequential(base, es, target, catalog, user_ids, args.sequential, cores)
        alone = rows_alone(es, target, catalog, user_ids, args.row_requests, cores)
        loaded = None if args.no_load else load(base, user_ids, args.rps, args.duration, cores)
        rows = quality(es, target, catalog, exact, users, user_vectors, args.quality_users)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    if builds:   # the worst of the builds, each build's beside it
        builds[-1] = rows
        for row_id, q in rows.items():
            q["id_recall_builds"] = [b[row_id]["id_recall"] for b in builds]
            q["score_recall_builds"] = [b[row_id]["score_recall"] for b in builds]
            q["id_recall"], q["score_recall"] = min(q["id_recall_builds"]), min(q["score_recall_builds"])
    for row_id, q in rows.items():
        q.update(took_p50_ms=alone[row_id]["took_p50_ms"], es_cpu_ms=alone[row_id]["es_cpu_ms"],
                 plan_alone=alone[row_id]["plan"])
    peer_result = None
    if not args.no_peer:
        from peer import peer_ratio

        stored = mips.item_vectors(item_vectors, mips.max_norm(item_vectors)) if meta.get("item_vector_scale") \
            else np.asarray(item_vectors, np.float32)
        peer_result = peer(stored, exact, users, user_vectors, args.quality_users, settings.hnsw_m,
                           settings.hnsw_ef_construction, list(rows))
        for row_id, q in rows.items():
            ratio, ef, reached = (None, None, None) if q["es_cpu_ms"] is None else \
                peer_ratio(q["es_cpu_ms"], q["id_recall"], peer_result["frontier"][row_id])
            q.update(peer_ratio=ratio, peer_ef=ef, peer_reached=reached, peer_frontier=peer_result["frontier"][row_id],
                     numpy_exact_ms=peer_result["numpy_exact_ms"][row_id])
    result.update({
        "es_cpu_ms_per_homepage": seq["es_cpu"], "service_cpu_ms_per_homepage": seq["service_cpu"],
        "client_cpu_ms_per_homepage": seq["client_cpu"],
        "loadgen_cpu_ms_per_homepage": loaded["loadgen_cpu"] if loaded else None,
        "load_es_cpu_ms_per_homepage": loaded["es_cpu"] if loaded else None,
        "load_service_cpu_ms_per_homepage": loaded["service_cpu"] if loaded else None,
        "offered_rps": args.rps, "achieved_rps": loaded["rps"] if loaded else None,
        "p50_ms": loaded["p50"] if loaded else None, "p95_ms": loaded["p95"] if loaded else None,
        "p99_ms": loaded["p99"] if loaded else None, "errors": loaded["errors"] if loaded else None,
        "load_generator": loaded["generator"] if loaded else None,
        "service_p50_ms": seq["service_p50"], "direct_p50_ms": seq["direct_p50"],
        "overhead_ratio": seq["service_p50"] / seq["direct_p50"], "es_took_p50_ms": seq["took_p50"],
        "segments": publish.get("segments"), "builds": max(len(builds), 1), "rows": rows})

    report(command, args, settings, publish, result, peer_result)
    if args.json:
        doc = {"command": command, "date": date.today().isoformat(), "items": args.items, "loads": {settings.index_type: publish},
               "publish": publish, "peer_build_s": peer_result["build_s"] if peer_result else None, "results": [result]}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"\nwrote {args.json}")
    if args.plots:
        write_plots(command, args, result, loaded)
    return 0


def report(command: str, args, settings: Settings, publish: dict, r: dict, peer_result: dict | None) -> None:
    print(f"\ncommand: {command}")
    print(f"catalog {args.items:,} items x 64 dims{' (full rank %.2g)' % args.full_rank if args.full_rank else ''}, "
          f"6-row homepage, user filters {USER_FILTER}; {settings.index_type} m {settings.hnsw_m} / "
          f"ef_construction {settings.hnsw_ef_construction}, partitions "
          f"{', '.join(f'{f} ({len(vs)} values)' for f, vs in (publish.get('partitions') or {}).items()) or 'none'}")
    if publish.get("publish_s"):
        print(f"publish {publish['publish_s']:.0f} s (merge included), item docs/s {publish['item_docs_per_s'] or 0:,.0f}, "
              f"item index {publish['index_bytes'] / 2**20:,.0f} MiB")
    print(f"segments: {publish.get('segments')}; node CPU read from {r.get('cpu_source')}; recall: the worst row of "
          f"{r.get('builds', 1)} graph build(s)")
    print(f"\nCPU ms per homepage (sequential): node {r['es_cpu_ms_per_homepage']:.1f}, service "
          f"{r['service_cpu_ms_per_homepage']:.1f}, client {r['client_cpu_ms_per_homepage']:.1f}; took p50 "
          f"{r['es_took_p50_ms']:.1f} ms; service p50 {r['service_p50_ms']:.1f} ms / direct {r['direct_p50_ms']:.1f} ms "
          f"(ratio {r['overhead_ratio']:.2f})")
    if r["achieved_rps"] is not None:
        print(f"load ({r['load_generator']}): {r['offered_rps']:g} rps offered for {args.duration:g} s, "
              f"{r['achieved_rps']:.1f} achieved, p50/p95/p99 {r['p50_ms']:.0f}/{r['p95_ms']:.0f}/{r['p99_ms']:.0f} ms, "
              f"{r['errors']} errors; CPU ms per homepage node {r['load_es_cpu_ms_per_homepage']:.1f}, service "
              f"{r['load_service_cpu_ms_per_homepage']:.1f}, load generator {r['loadgen_cpu_ms_per_homepage']:.2f}")
    print(f"\n{'row':<13} {'plan (page)':<22} {'matches':>8} {'id rec':>7} {'score rec':>9} {'short':>6} "
          f"{'alone: plan':<15} {'ES cpu':>7} {'took':>5} {'peer ratio':>10} {'ef':>5} {'numpy ms':>8}")
    for row_id, q in r["rows"].items():
        ratio = f"{q['peer_ratio']:.1f}{'' if q.get('peer_reached', True) else '*'}" if q.get("peer_ratio") else "-"
        cpu = "-" if q["es_cpu_ms"] is None else f"{q['es_cpu_ms']:.2f}"
        print(f"{row_id:<13} {q['plan']:<22} {q['match_fraction']:>7.1%} {q['id_recall']:>7.3f} {q['score_recall']:>9.4f} "
              f"{q.get('short_share', float('nan')):>6.1%} {q['plan_alone']:<15} {cpu:>7} {q['took_p50_ms']:>5.1f} {ratio:>10} "
              f"{q.get('peer_ef', '-')!s:>5} {q.get('numpy_exact_ms', float('nan')):>8.2f}")
    if peer_result:
        print(f"\n* FAISS's largest ef ({PEER_EFS[-1]}) did not reach the row's recall; its cost there is used."
              f"\nFAISS build {peer_result['build_s']:.0f} s (one thread). Its frontier (ef: ms per query, id recall):")
        for row_id, points in peer_result["frontier"].items():
            print(f"  {row_id:<13} " + "  ".join(f"{p['ef']}: {p['ms_per_query']:.2f} ms {p['id_recall']:.3f}" for p in points))


def write_plots(command: str, args, r: dict, loaded: dict | None) -> None:
    import plots

    tag = f"{args.items // 1000}k{'_fullrank' if args.full_rank else ''}"
    points = []
    for row_id, q in r["rows"].items():
        if q["es_cpu_ms"] is None:
            continue
        points.append({"row": row_id, "group": row_id, "setting": f"ES {q['plan']}", "cost_ms": q["es_cpu_ms"],
                       "id_recall": q["id_recall"], "highlight": True})
        for p in q.get("peer_frontier", []):
            points.append({"row": f"{row_id} (FAISS)", "group": row_id, "setting": str(p["ef"]),
                           "cost_ms": p["ms_per_query"], "id_recall": p["id_recall"]})
    plots.plot_frontier({"title": f"recall against CPU per row, {args.items:,} items: Elasticsearch as served (rings) "
                                  "and FAISS HNSW by efSearch", "source": command, "date": date.today().isoformat(),
                         "x_log": True, "x_label": "CPU ms per row (Elasticsearch: node CPU; FAISS: one thread)",
                         "points": points}, plots.DOCS / f"frontier_{tag}.png")
    if loaded:
        plots.plot_latency_cdf({"title": f"homepage latency at {args.rps:g} rps offered, {args.items:,} items",
                                "source": command, "date": date.today().isoformat(),
                                "runs": [{"label": f"{r['achieved_rps']:.1f} rps achieved", "latencies_ms": loaded["latencies"]}]},
                               plots.DOCS / f"latency_{tag}.png")


if __name__ == "__main__":
    sys.exit(main())
