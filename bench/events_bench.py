"""Near-real-time user vectors under load: the events API beside homepage traffic, and the stream.

    python bench/events_bench.py --items 100000 --users 20000 --rps 50 --events-rps 50 --duration 60 \
        --stream-events 60000 --events-per-file 2000 --files-per-trigger 1 5

Publishes a pair (``bench-ev-*``, hnsw, synthetic catalog) whose user vectors and registered
encoder come from a seeded user tower (``ingest/embedding/seeded_encoder.py``; ``--reuse`` serves
the pair already there), then:

1. **API** (gunicorn, as in production): homepages open-loop at ``--rps`` for ``--duration`` s,
   alone and then beside an open-loop event sender at ``--events-rps`` (one batch of 1..3 items of
   a random user per request). Event-to-visible per batch: from sending the POST until a real-time
   GET of the user document (what the next homepage reads) shows the batch id, so it includes one
   verification read. Reported: its p50/p95, the POST's own p50/p95, the homepage p50/p95 alone
   and with events, errors.
2. **Stream** (real Spark, local[2], in this process): ``--stream-events`` events over the users in
   files of ``--events-per-file``, applied by ``start_user_events_stream(available_now=True)`` once
   per ``--files-per-trigger`` value (each with a fresh checkpoint). Reported: events/s from the
   query's start to its end (Spark's scheduling included) and inside the micro-batches.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
from serving_bench import bench_rows_config, homepage_url, http_get, load, pct

from app.server import start_gunicorn
from facetrec.catalog.rows import RowCatalog
from facetrec.es import make_client, resolve_url
from facetrec.events.apply import UserEvents
from facetrec.local.node import port_is_free
from facetrec.model.user_encoder import EncoderRegistry, ExportedUserEncoder, register
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT
from facetrec.settings import Settings
from ingest.embedding.seeded_encoder import SeededUserModel
from ingest.embedding.synthetic import embedding_records
from ingest.indexing.reindex import run_reindex

MODEL = "bench-events-seeded"


def publish(es, settings: Settings, args, models_root: Path) -> list[dict]:
    started = time.perf_counter()
    items, users, item_vectors, _ = embedding_records(args.items, args.users, dims=64, seed=3)
    model = SeededUserModel(np.asarray(item_vectors, np.float32), [i["item_id"] for i in items])
    export = Path(tempfile.mkdtemp(prefix="facetrec-bench-encoder-"))
    model.export(export)
    register(export, models_root, MODEL)
    print(f"generated {args.items:,} items, {args.users:,} users, encoder in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    if args.reuse:
        live = es.count(index=settings.user_alias)["count"]
        if live < len(users):
            raise SystemExit(f"--reuse: {settings.user_alias} holds {live:,} users, expected {len(users):,}")
        return items
    es.indices.delete(index="bench-ev-*", ignore_unavailable=True)
    vectors = ExportedUserEncoder(export).user_vectors([u["seen_item_ids"] for u in users],
                                                        np.zeros((len(users), 0), np.int64))
    users = [{**u, "user_embed": v} for u, v in zip(users, vectors)]
    run_reindex(es, settings, RowCatalog.load(REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml"), items=items, users=users,
                model_version=MODEL, sample_users=5, expected_items=len(items),
                expected_users=len(users))
    return items


def post_json(url: str, body: dict) -> tuple[float, int]:
    return http_get(urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                           headers={"Content-Type": "application/json"}))


def send_events(base: str, es, settings: Settings, user_ids: list[str], item_ids: list[str], rps: float,
                duration: float, seed: int = 0) -> dict:
    """Open loop at ``rps`` batches/s; per batch: POST latency and event-to-visible (until a real-time
    GET of the user document shows the batch id)."""
    rng = random.Random(seed)
    plan = [(rng.choice(user_ids), [rng.choice(item_ids) for _ in range(rng.randint(1, 3))], f"bench-{seed}-{n}")
            for n in range(int(rps * duration))]
    posts, visible, errors, not_visible = [], [], 0, 0
    lock = threading.Lock()

    def one(user_id: str, items: list[str], batch_id: str) -> None:
        nonlocal errors, not_visible
        started = time.perf_counter()
        now = datetime.now(timezone.utc).isoformat()
        post_ms, status = post_json(f"{base}/v1/users/{user_id}/events",
                                    {"batch_id": batch_id, "events": [{"item_id": i, "ts": now} for i in items]})
        if status != 200:
            with lock:
                errors += 1
            return
        doc = es.get(index=settings.user_alias, id=user_id, source_includes=["event_batch_ids"])
        done = (time.perf_counter() - started) * 1000
        with lock:
            posts.append(post_ms)
            if batch_id in doc["_source"].get("event_batch_ids", []):
                visible.append(done)
            else:
                not_visible += 1

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        futures = []
        for n, args in enumerate(plan):
            delay = started + n / rps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, *args))
        for f in futures:
            f.result()
    return {"batches": len(plan), "rate": len(plan) / (time.perf_counter() - started), "errors": errors,
            "not_visible": not_visible, "post_p50": pct(posts, 50), "post_p95": pct(posts, 95),
            "visible_p50": pct(visible, 50), "visible_p95": pct(visible, 95), "visible_p99": pct(visible, 99)}


def api_part(es, settings: Settings, args, models_root: Path, items: list[dict]) -> dict:
    port = next(p for p in range(18100, 18200) if port_is_free(p))
    proc = start_gunicorn({"ES_URL": resolve_url(settings), "FACETREC_ITEM_ALIAS": settings.item_alias,
                           "FACETREC_USER_ALIAS": settings.user_alias, "FACETREC_MODELS_ROOT": str(models_root),
                           "FACETREC_ROWS_CONFIG": str(bench_rows_config()),
                           "FACETREC_WORKERS": os.environ.get("FACETREC_WORKERS", "2"), "FACETREC_THREADS": "8",
                           "FACETREC_LOG_LEVEL": "warning", "ES_REQUEST_TIMEOUT_S": "2"}, f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    user_ids = [f"u{i}" for i in range(args.users)]
    item_ids = [i["item_id"] for i in items]
    try:
        for i in range(50):   # warm up: connections, caches, each worker's encoder
            http_get(homepage_url(base, user_ids[i], "knn"))
        send_events(base, es, settings, user_ids, item_ids, rps=10, duration=2, seed=99)
        alone = load(base, user_ids, args.rps, args.duration, args.concurrency, "knn")
        with cf.ThreadPoolExecutor(1) as side:
            sender = side.submit(send_events, base, es, settings, user_ids, item_ids, args.events_rps, args.duration, 1)
            beside = load(base, user_ids, args.rps, args.duration, args.concurrency, "knn")
            events = sender.result()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    return {"homepage_alone": alone, "homepage_with_events": beside, "events": events}


def stream_part(es, settings: Settings, args, models_root: Path, items: list[dict]) -> list[dict]:
    from ingest.embedding.spark import make_spark_session
    from ingest.streaming.user_events_stream import start_user_events_stream

    rng = random.Random(5)
    work = Path(tempfile.mkdtemp(prefix="facetrec-bench-stream-"))
    spark = make_spark_session("facetrec-events-bench")
    results = []
    try:
        for files_per_trigger in args.files_per_trigger:
            source = work / f"events-{files_per_trigger}"
            source.mkdir()
            base = datetime.now(timezone.utc) - timedelta(minutes=1)
            n_files = args.stream_events // args.events_per_file
            for f in range(n_files):
                lines = [json.dumps({"user_id": f"u{rng.randrange(args.users)}",
                                     "item_id": items[rng.randrange(len(items))]["item_id"],
                                     "ts": (base + timedelta(milliseconds=f * args.events_per_file + k)).isoformat()})
                         for k in range(args.events_per_file)]
                path = source / f"part-{f:05d}.json"
                path.write_text("\n".join(lines) + "\n")
                os.utime(path, (time.time() - n_files + f, time.time() - n_files + f))
            events = UserEvents(make_client(settings, request_timeout=120), settings, EncoderRegistry(models_root))
            started = time.perf_counter()
            query, writer = start_user_events_stream(spark, source, work / f"checkpoint-{files_per_trigger}", events,
                                                     available_now=True, max_files_per_trigger=files_per_trigger,
                                                     progress=lambda m: print(f"stream: {m}", file=sys.stderr))
            query.awaitTermination()
            wall = time.perf_counter() - started
            if query.exception():
                raise RuntimeError(query.exception())
            t = writer.totals
            micro = [b["seconds"] for b in writer.micro_batches]
            results.append({"files_per_trigger": files_per_trigger, "events": t["events"], "epochs": t["epochs"],
                            "users_per_batch": t["users"] / max(t["epochs"], 1), "applied": t["applied"],
                            "wall_s": wall, "events_per_s": t["events"] / wall,
                            "events_per_s_in_batches": t["events"] / sum(micro) if micro else float("nan"),
                            "micro_batch_p50_s": pct(micro, 50)})
    finally:
        spark.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rps", type=float, default=50, help="homepages per second")
    parser.add_argument("--events-rps", type=float, default=50, help="event batches per second (1..3 items each)")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream-events", type=int, default=60_000)
    parser.add_argument("--events-per-file", type=int, default=2_000)
    parser.add_argument("--files-per-trigger", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="serve the bench-ev-* pair already loaded")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()

    settings = Settings.from_env().replace(item_alias="bench-ev-item_index", user_alias="bench-ev-user_index",
                                           index_type="hnsw")
    models_root = Path(tempfile.mkdtemp(prefix="facetrec-bench-models-"))
    es = make_client(settings, request_timeout=900)
    items = publish(es, settings, args, models_root)
    out: dict = {"command": f"python bench/events_bench.py {' '.join(sys.argv[1:])}", "items": args.items,
                 "users": args.users}
    if not args.skip_api:
        out["api"] = api_part(es, settings, args, models_root, items)
    if not args.skip_stream:
        out["stream"] = stream_part(es, settings, args, models_root, items)

    print(f"\ncommand: {out['command']}")
    print(f"catalog {args.items:,} items x 64 dims (hnsw), {args.users:,} users, 6-row homepage")
    if "api" in out:
        a, b, e = out["api"]["homepage_alone"], out["api"]["homepage_with_events"], out["api"]["events"]
        print(f"\n{'homepages':<22} {'rps':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6}")
        for name, r in (("alone", a), (f"with {args.events_rps:g} events/s", b)):
            print(f"{name:<22} {r['rps']:>6.1f} {r['p50']:>7.1f} {r['p95']:>7.1f} {r['p99']:>7.1f} {r['errors']:>6}")
        print(f"\n{'event batches':<22} {'rate/s':>6} {'POST p50':>8} {'POST p95':>8} {'visible p50':>11} "
              f"{'visible p95':>11} {'errors':>6} {'not visible':>11}")
        print(f"{'beside homepages':<22} {e['rate']:>6.1f} {e['post_p50']:>8.1f} {e['post_p95']:>8.1f} "
              f"{e['visible_p50']:>11.1f} {e['visible_p95']:>11.1f} {e['errors']:>6} {e['not_visible']:>11}")
        print(f"homepage p95 ratio with/without events: {b['p95'] / a['p95']:.2f}")
    if "stream" in out:
        print(f"\n{'files/trigger':>13} {'events':>7} {'batches':>7} {'users/batch':>11} {'wall s':>7} "
              f"{'events/s':>9} {'in batches/s':>12} {'batch p50 s':>11}")
        for r in out["stream"]:
            print(f"{r['files_per_trigger']:>13} {r['events']:>7} {r['epochs']:>7} {r['users_per_batch']:>11.0f} "
                  f"{r['wall_s']:>7.1f} {r['events_per_s']:>9,.0f} {r['events_per_s_in_batches']:>12,.0f} "
                  f"{r['micro_batch_p50_s']:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
