"""What the live recall monitor costs the homepage path, and what it reports.

    python bench/monitor_overhead.py --items 1000000 --reuse [--pages 3000] [--rate 0.01]

Serves homepages of the synthetic catalog behind the ``bench-*`` aliases (published by
``bench/serving_bench.py`` / ``bench/profile_homepage.py``; without --reuse a catalog of --items is
published here) one after another through ``facetrec.serving.homepage.recommend``, in blocks of 100 pages
alternating monitor off / monitor on at --rate (ABAB, so drift hits both arms alike), and prints the
p50 / p95 page latency of each arm, their difference, how many exact re-asks ran, and the recall
each row reported (``retrieval.recall`` as the service would send it).
"""

from __future__ import annotations

import argparse
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
from serving_bench import USER_CLAUSES, pct  # the serving benchmark's user filters

from facetrec.catalog.rows import RowCatalog
from facetrec.es import make_client
from facetrec.metrics import NoMetrics
from facetrec.serving.homepage import SearchConfig, recommend
from facetrec.serving.recall_monitor import RecallMonitor
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT
from facetrec.settings import Settings
from ingest.embedding.synthetic import embedding_records
from ingest.indexing.reindex import run_reindex


class Recorded(NoMetrics):
    def __init__(self):
        self.recall: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}

    def distribution(self, name, value, tags=()):
        row = next(t.split(":", 1)[1] for t in tags if t.startswith("row:"))
        self.recall.setdefault(row, []).append(value)

    def increment(self, name, tags=(), value=1):
        self.counts[name] = self.counts.get(name, 0) + value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--index-type", default="hnsw")
    parser.add_argument("--pages", type=int, default=3000, help="pages per arm")
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--reuse", action="store_true", help="serve the bench-* generation already loaded")
    args = parser.parse_args()

    settings = Settings.from_env().replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                           index_type=args.index_type)
    catalog = RowCatalog.load(REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml")
    es = make_client(settings, request_timeout=900)
    # --reuse needs only the user ids, which do not depend on the catalog's size: a small one does.
    items, users, _, _ = embedding_records(min(args.items, 1000) if args.reuse else args.items, args.users, dims=64,
                                           seed=1)
    if not args.reuse:
        es.indices.delete(index="bench-*", ignore_unavailable=True)
        run_reindex(es, settings, catalog, items=items, users=users, model_version="bench", sample_users=5)
    live = es.count(index=settings.item_alias)["count"]
    target = SearchConfig.from_settings(settings, request_timeout_s=5.0)
    metrics = Recorded()
    monitor = RecallMonitor(es, target, metrics, args.rate, args.index_type)
    rows = catalog.homepage_rows()
    user_ids = [u["user_id"] for u in users]
    times: dict[str, list[float]] = {"off": [], "on": []}
    n = 0
    for i in range(50):   # warm caches and the connection
        recommend(es, target, user_ids[i], rows, USER_CLAUSES)
    started = time.perf_counter()
    while len(times["on"]) < args.pages:
        for arm in ("off", "on"):
            for _ in range(100):
                user = user_ids[n % len(user_ids)]
                n += 1
                t0 = time.perf_counter()
                recommend(es, target, user, rows, USER_CLAUSES, observe=monitor.observe if arm == "on" else None)
                times[arm].append((time.perf_counter() - t0) * 1000)
        print(f"\r{len(times['on']):,}/{args.pages:,} pages per arm", end="", file=sys.stderr)
    print(file=sys.stderr)
    monitor.drain(120)
    monitor.close()
    elapsed = time.perf_counter() - started

    print(f"command: python bench/monitor_overhead.py {' '.join(sys.argv[1:])}")
    print(f"{live:,} items ({args.index_type}), 6-row homepage with user filters, pages one after another, "
          f"{args.pages:,} per arm in alternating blocks of 100, {elapsed:.0f}s")
    print(f"\n{'monitor':<14} {'p50 ms':>8} {'p95 ms':>8}")
    for arm in ("off", "on"):
        print(f"{arm + (f' ({args.rate:g})' if arm == 'on' else ''):<14} {pct(times[arm], 50):>8.2f} "
              f"{pct(times[arm], 95):>8.2f}")
    print(f"{'difference':<14} {pct(times['on'], 50) - pct(times['off'], 50):>+8.2f} "
          f"{pct(times['on'], 95) - pct(times['off'], 95):>+8.2f}")
    checks = max((len(v) for v in metrics.recall.values()), default=0)
    print(f"\nexact re-asks: {checks} pages; counts: {metrics.counts or 'none dropped, skipped or failed'}")
    print(f"\n{'row':<14} {'checks':>6} {'mean recall':>11} {'min':>6}")
    for row, values in metrics.recall.items():
        print(f"{row:<14} {len(values):>6} {sum(values) / len(values):>11.3f} {min(values):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
