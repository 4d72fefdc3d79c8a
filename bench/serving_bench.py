"""Homepage serving under load: gunicorn + the local node, a synthetic catalog (64 dims), 6 rows.

    python bench/serving_bench.py --items 100000 --index-types flat int8_hnsw --modes knn script_score \
        --rps 50 --duration 60 --json results.json

For each index type: publish a generation (validated, swapped; bulk docs/s reported), start
gunicorn, then for each retrieval mode:
1. overhead: N sequential homepage calls through the service vs the same user GET + _msearch sent
   directly with the Python client (same bodies), p50 of each and the ratio, plus Elasticsearch's
   own ``took`` per homepage and per row;
2. load: an open-loop generator at --rps for --duration seconds (bounded concurrency), reporting
   achieved rps, p50/p95/p99 and errors;
3. quality per row against exact dot products computed in numpy under the same filters (seen
   items excluded): id recall@size (share of the exact top-size ids returned) and score recall
   (sum of the true dot products of what was returned / sum of the exact top's), which tells
   near-ties apart from real misses.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import yaml

from app.server import start_gunicorn
from facetrec.es import make_client, resolve_url, script_lang
from facetrec.es_local import port_is_free
from facetrec.homepage import Target, build_searches, fetch_user
from facetrec.rows import RowCatalog
from facetrec.settings import REPO_ROOT, RETRIEVAL_MODES, Settings
from ingest.indexing.reindex import run_reindex
from ingest.embedding.synthetic import embedding_records

USER_FILTER = "language=en&country=US"
USER_CLAUSES = [{"term": {"language": "en"}}, {"term": {"country": "US"}}]


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
    return float(np.percentile(values, q)) if values else float("nan")


def bench_rows_config() -> Path:
    """app/rows.yaml with every mode open to callers on every row (the bench asks for each mode on
    the whole homepage; the shipped config allows callers only the rows' own modes)."""
    raw = yaml.safe_load((REPO_ROOT / "app" / "rows.yaml").read_text())
    raw["caller_modes"] = list(RETRIEVAL_MODES)
    for row in raw["rows"]:
        row.pop("caller_modes", None)
    path = Path(tempfile.mkdtemp(prefix="facetrec-bench-")) / "rows.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_service(settings: Settings, port: int) -> subprocess.Popen:
    return start_gunicorn({"ES_URL": resolve_url(settings), "FACETREC_ITEM_ALIAS": settings.item_alias,
                           "FACETREC_USER_ALIAS": settings.user_alias,
                           "FACETREC_ROWS_CONFIG": str(bench_rows_config()),
                           "FACETREC_WORKERS": os.environ.get("FACETREC_WORKERS", "2"), "FACETREC_THREADS": "8",
                           "FACETREC_LOG_LEVEL": "warning", "ES_REQUEST_TIMEOUT_S": "2"}, f"127.0.0.1:{port}")


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


def homepage_url(base: str, user_id: str, mode: str) -> str:
    return f"{base}/v1/users/{user_id}/homepage?{USER_FILTER}&mode={mode}"


def measure_overhead(base: str, es, target: Target, catalog: RowCatalog, users: list[str], n: int, mode: str) -> dict:
    """Sequential calls: the service vs the same GET + _msearch sent directly; ES took per homepage/row."""
    service, direct, took = [], [], []
    rows = catalog.homepage_rows()
    row_took: dict[str, list[float]] = {row.id: [] for row in rows}
    for i in range(n):
        user_id = users[i % len(users)]
        service.append(http_get(homepage_url(base, user_id, mode))[0])
        started = time.perf_counter()
        user = fetch_user(es, target.user_index, user_id, 5.0)
        result = es.msearch(searches=build_searches(rows, user, USER_CLAUSES, target, mode=mode,
                                                    script_lang=script_lang(es)))
        direct.append((time.perf_counter() - started) * 1000)
        took.append(result["took"])
        for row, response in zip(rows, result["responses"]):
            row_took[row.id].append(response.get("took", float("nan")))
    return {"service_p50": pct(service, 50), "direct_p50": pct(direct, 50), "took_p50": pct(took, 50),
            "row_took_p50": {row_id: pct(v, 50) for row_id, v in row_took.items()}}


def load(base: str, users: list[str], rps: float, duration: float, concurrency: int, mode: str) -> dict:
    total = int(rps * duration)
    latencies, errors = [], 0
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i in range(total):
            delay = started + i / rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(http_get, homepage_url(base, users[i % len(users)], mode)))
        for f in futures:
            latency, status = f.result()
            if status == 200:
                latencies.append(latency)
            else:
                errors += 1
    elapsed = time.perf_counter() - started
    return {"requests": total, "rps": total / elapsed, "p50": pct(latencies, 50), "p95": pct(latencies, 95),
            "p99": pct(latencies, 99), "errors": errors}


class ExactRows:
    """Exact per-row answers in numpy: row masks under the user filters, computed once."""

    def __init__(self, catalog: RowCatalog, items: list[dict], item_vectors: np.ndarray):
        preds = row_predicates()
        self.item_ids = np.array([r["item_id"] for r in items])
        self.position = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.vectors = item_vectors
        base = np.array([r["language"] == "en" and "US" in r["country"] for r in items])
        self.masks = {row.id: base & np.array([preds[row.id](r) for r in items]) for row in catalog.homepage_rows()}

    def top(self, row_id: str, user_vector: np.ndarray, seen: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``size`` (positions, dot products) of a row, seen items excluded."""
        mask = self.masks[row_id].copy()
        mask[[self.position[s] for s in seen if s in self.position]] = False
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


def quality(es, target: Target, catalog: RowCatalog, exact: ExactRows, users, user_vectors, mode: str,
            n_users: int = 30) -> dict:
    """Recall per row as the page asks it (one ``_msearch`` of the whole homepage, so a later row
    has its larger k for cross-row backfill), each row's first ``size`` hits before de-duplication
    against its exact top. (Before 2026-12-01 each row was asked alone, with k = its size.)"""
    rows = catalog.homepage_rows()
    id_recalls: dict[str, list] = {row.id: [] for row in rows}
    score_recalls: dict[str, list] = {row.id: [] for row in rows}
    for u in range(n_users):
        user = fetch_user(es, target.user_index, users[u]["user_id"], 5.0)
        searches = build_searches(rows, user, USER_CLAUSES, target, mode=mode, script_lang=script_lang(es))
        for row, response in zip(rows, es.msearch(searches=searches)["responses"]):
            got = [h["_id"] for h in response["hits"]["hits"][:row.size]]
            id_recall, score_recall = exact.recall(row.id, user_vectors[u], users[u]["seen_item_ids"], row.size, got)
            id_recalls[row.id].append(id_recall)
            score_recalls[row.id].append(score_recall)
    return {row.id: {"match_fraction": float(exact.masks[row.id].mean()), "id_recall": float(np.mean(id_recalls[row.id])),
                     "score_recall": float(np.nanmean(score_recalls[row.id])),
                     "search": "exact" if mode == "knn" and row.exact else mode}   # rows marked exact scan the flat copy
            for row in rows}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--index-types", nargs="+", default=["flat", "int8_hnsw"])
    parser.add_argument("--modes", nargs="+", default=["knn"], choices=["knn", "script_score"])
    parser.add_argument("--rps", type=float, default=50)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overhead-requests", type=int, default=200)
    parser.add_argument("--quality-users", type=int, default=30)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--reuse", action="store_true",
                        help="serve the bench-* generation already loaded (same --items; one index type)")
    args = parser.parse_args()

    base_settings = Settings.from_env()
    catalog = RowCatalog.load(REPO_ROOT / "app" / "rows.yaml")
    started = time.perf_counter()
    items, users, item_vectors, user_vectors = embedding_records(args.items, args.users, dims=64, seed=1)
    print(f"generated {args.items:,} items and {args.users:,} users in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    exact = ExactRows(catalog, items, item_vectors)
    es = make_client(base_settings, request_timeout=900)
    results, loads = [], {}
    for index_type in args.index_types:
        settings = base_settings.replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                         index_type=index_type)
        if args.reuse:
            live = es.count(index=settings.item_alias)["count"]
            if live != len(items):
                raise SystemExit(f"--reuse: {settings.item_alias} holds {live:,} items, not {len(items):,}")
        else:
            es.indices.delete(index="bench-*", ignore_unavailable=True)
            started = time.perf_counter()
            published = run_reindex(es, settings, catalog, items=items, users=users, model_version="bench",
                                    sample_users=5, force_merge=index_type != "flat", expected_items=len(items),
                                    expected_users=len(users))
            loads[index_type] = {"publish_s": time.perf_counter() - started,
                                 "item_docs_per_s": published.get("docs_per_s", {}).get("item")}
        port = next(p for p in range(18000, 18100) if port_is_free(p))
        proc = start_service(settings, port)
        base = f"http://127.0.0.1:{port}"
        target = Target.from_settings(settings, default_mode="knn", dedupe_across_rows=True, request_timeout_s=5.0)
        try:
            user_ids = [u["user_id"] for u in users]
            for mode in args.modes:
                for i in range(50):  # warm up caches and connections
                    http_get(homepage_url(base, user_ids[i], mode))
                overhead = measure_overhead(base, es, target, catalog, user_ids, args.overhead_requests, mode)
                loaded = load(base, user_ids, args.rps, args.duration, args.concurrency, mode)
                rows = quality(es, target, catalog, exact, users, user_vectors, mode, args.quality_users)
                for row_id, took in overhead["row_took_p50"].items():
                    rows[row_id]["took_p50_ms"] = took
                results.append({
                    "index_type": index_type, "mode": mode, "achieved_rps": loaded["rps"], "p50_ms": loaded["p50"],
                    "p95_ms": loaded["p95"], "p99_ms": loaded["p99"], "errors": loaded["errors"],
                    "service_p50_ms": overhead["service_p50"], "direct_p50_ms": overhead["direct_p50"],
                    "overhead_ratio": overhead["service_p50"] / overhead["direct_p50"],
                    "es_took_p50_ms": overhead["took_p50"], "rows": rows})
        finally:
            os.killpg(proc.pid, signal.SIGTERM)

    print(f"\ncommand: python bench/serving_bench.py {' '.join(sys.argv[1:])}")
    print(f"catalog {args.items:,} items x 64 dims, 6-row homepage, user filters {USER_FILTER}, "
          f"{args.rps:g} rps offered for {args.duration:g}s")
    print(f"\n{'index':<10} {'publish s':>9} {'item docs/s':>11}")
    for index_type, l in loads.items():
        print(f"{index_type:<10} {l['publish_s']:>9.0f} {l['item_docs_per_s'] or float('nan'):>11,.0f}")
    print(f"\n{'index':<10} {'mode':<12} {'rps':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'svc p50':>8} {'direct p50':>10} {'ratio':>6} {'ES took p50':>11}")
    for r in results:
        print(f"{r['index_type']:<10} {r['mode']:<12} {r['achieved_rps']:>6.1f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
              f"{r['p99_ms']:>7.1f} {r['errors']:>6} {r['service_p50_ms']:>8.2f} {r['direct_p50_ms']:>10.2f} "
              f"{r['overhead_ratio']:>6.2f} {r['es_took_p50_ms']:>11.1f}")
    print(f"\n{'index':<10} {'mode':<12} {'row':<13} {'search':<12} {'matches':>8} {'id recall':>9} {'score rec':>9} "
          f"{'took p50':>8}")
    for r in results:
        for row_id, q in r["rows"].items():
            print(f"{r['index_type']:<10} {r['mode']:<12} {row_id:<13} {q['search']:<12} {q['match_fraction']:>7.1%} "
                  f"{q['id_recall']:>9.3f} {q['score_recall']:>9.4f} {q['took_p50_ms']:>8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": f"python bench/serving_bench.py {' '.join(sys.argv[1:])}", "items": args.items,
                       "loads": loads, "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
