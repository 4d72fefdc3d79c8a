"""Homepage serving under load: gunicorn + the local node, a synthetic catalog (64 dims), 6 rows.

    python bench/serving_bench.py --items 100000 --index-types flat int8_hnsw --rps 50 --duration 60

For each index type: publish a generation (validated, swapped), start gunicorn, then
1. overhead: N sequential homepage calls through the service vs the same user GET + _msearch sent
   directly with the Python client (same bodies), p50 of each and the ratio;
2. load: an open-loop generator at --rps for --duration seconds (bounded concurrency), reporting
   achieved rps, p50/p95/p99 and errors;
3. recall@size per row of the index's knn against exact dot products computed in numpy under the
   same filters.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date

import numpy as np

from app.server import start_gunicorn
from facetrec.es import make_client, resolve_url
from facetrec.es_local import port_is_free
from facetrec.homepage import Target, build_searches, fetch_user
from facetrec.rows import RowCatalog
from facetrec.settings import REPO_ROOT, Settings
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


def start_service(settings: Settings, port: int) -> subprocess.Popen:
    return start_gunicorn({"ES_URL": resolve_url(settings), "FACETREC_ITEM_ALIAS": settings.item_alias,
                           "FACETREC_USER_ALIAS": settings.user_alias,
                           "FACETREC_WORKERS": os.environ.get("FACETREC_WORKERS", "2"), "FACETREC_THREADS": "8",
                           "FACETREC_LOG_LEVEL": "warning", "ES_REQUEST_TIMEOUT_S": "2"}, f"127.0.0.1:{port}")


def http_get(url: str) -> tuple[float, int]:
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


def measure_overhead(base: str, es, target: Target, catalog: RowCatalog, users: list[str], n: int) -> dict:
    service, direct = [], []
    rows = catalog.homepage_rows()
    for i in range(n):
        user_id = users[i % len(users)]
        service.append(http_get(f"{base}/v1/users/{user_id}/homepage?{USER_FILTER}")[0])
        started = time.perf_counter()
        user = fetch_user(es, target.user_index, user_id, 5.0)
        es.msearch(searches=build_searches(rows, user, USER_CLAUSES, target))
        direct.append((time.perf_counter() - started) * 1000)
    return {"service_p50": pct(service, 50), "direct_p50": pct(direct, 50)}


def load(base: str, users: list[str], rps: float, duration: float, concurrency: int) -> dict:
    total = int(rps * duration)
    latencies, errors = [], 0
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i in range(total):
            delay = started + i / rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(http_get, f"{base}/v1/users/{users[i % len(users)]}/homepage?{USER_FILTER}"))
        for f in futures:
            latency, status = f.result()
            if status == 200:
                latencies.append(latency)
            else:
                errors += 1
    elapsed = time.perf_counter() - started
    return {"requests": total, "rps": total / elapsed, "p50": pct(latencies, 50), "p95": pct(latencies, 95),
            "p99": pct(latencies, 99), "errors": errors}


def recall(es, target: Target, catalog: RowCatalog, items, item_vectors, users, user_vectors, n_users=30) -> dict:
    preds = row_predicates()
    eligible_base = np.array([r["language"] == "en" and "US" in r["country"] for r in items])
    out = {}
    for row in catalog.homepage_rows():
        mask = eligible_base & np.array([preds[row.id](r) for r in items])
        hits = []
        for u in range(n_users):
            seen = set(users[u]["seen_item_ids"])
            ok = mask & np.array([r["item_id"] not in seen for r in items])
            idx = np.flatnonzero(ok)
            exact = {items[j]["item_id"] for j in idx[np.argsort(-(item_vectors[idx] @ user_vectors[u]))[:row.size]]}
            user = fetch_user(es, target.user_index, users[u]["user_id"], 5.0)
            body = build_searches([row], user, USER_CLAUSES, target)
            got = {h["_id"] for h in es.msearch(searches=body)["responses"][0]["hits"]["hits"][:row.size]}
            hits.append(len(exact & got) / max(len(exact), 1))
        out[row.id] = (float(np.mean(hits)), float(mask.mean()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--index-types", nargs="+", default=["flat", "int8_hnsw"])
    parser.add_argument("--rps", type=float, default=50)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overhead-requests", type=int, default=200)
    args = parser.parse_args()

    base_settings = Settings.from_env()
    catalog = RowCatalog.load(REPO_ROOT / "app" / "rows.yaml")
    print(f"generating {args.items:,} items and {args.users:,} users ...", file=sys.stderr)
    items, users, item_vectors, user_vectors = embedding_records(args.items, args.users, dims=64, seed=1)
    es = make_client(base_settings, request_timeout=600)
    results = []
    for index_type in args.index_types:
        settings = base_settings.replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                         index_type=index_type)
        es.indices.delete(index="bench-*", ignore_unavailable=True)
        run_reindex(es, settings, catalog, items=items, users=users, model_version="bench", sample_users=5,
                    force_merge=index_type != "flat")
        port = next(p for p in range(18000, 18100) if port_is_free(p))
        proc = start_service(settings, port)
        base = f"http://127.0.0.1:{port}"
        target = Target(item_index=settings.item_alias, user_index=settings.user_alias, similarity=settings.similarity,
                        default_mode="knn", num_candidates_factor=settings.num_candidates_factor,
                        request_timeout_s=5.0)
        try:
            user_ids = [u["user_id"] for u in users]
            for _ in range(50):  # warm up caches and connections
                http_get(f"{base}/v1/users/{user_ids[_]}/homepage?{USER_FILTER}")
            overhead = measure_overhead(base, es, target, catalog, user_ids, args.overhead_requests)
            loaded = load(base, user_ids, args.rps, args.duration, args.concurrency)
            recalls = recall(es, target, catalog, items, item_vectors, users, user_vectors)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
        results.append((index_type, overhead, loaded, recalls))

    print(f"\ncommand: python bench/serving_bench.py {' '.join(sys.argv[1:])}")
    print(f"catalog {args.items:,} items x 64 dims, 6-row homepage, user filters {USER_FILTER}")
    print(f"\n{'index':<10} {'rps':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'svc p50':>8} {'direct p50':>10} {'overhead':>9} {'ratio':>6}")
    for index_type, o, l, _ in results:
        print(f"{index_type:<10} {l['rps']:>6.1f} {l['p50']:>7.1f} {l['p95']:>7.1f} {l['p99']:>7.1f} {l['errors']:>6} "
              f"{o['service_p50']:>8.2f} {o['direct_p50']:>10.2f} {o['service_p50'] - o['direct_p50']:>8.2f}ms "
              f"{o['service_p50'] / o['direct_p50']:>6.2f}")
    print(f"\n{'index':<10} {'row':<13} {'matches':>8} {'recall@size':>12}")
    for index_type, _, _, recalls in results:
        for row_id, (r, frac) in recalls.items():
            print(f"{index_type:<10} {row_id:<13} {frac:>7.1%} {r:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
