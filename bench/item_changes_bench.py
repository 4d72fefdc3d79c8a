"""Item changes during the day, measured through gunicorn beside homepage load: how long a taken-down
item can still be served after its DELETE answered 200, and how many item changes a second the
service sustains.

    python bench/item_changes_bench.py [--items 20000] [--users 2000] [--rps 20] [--takedowns 40] [--reuse]

1. A synthetic catalog through the real pipeline (data, Spark ETL, a short training with id dropout,
   embedding with the exported item encoder, publish) behind ``bench-ic-*`` aliases (``--reuse``: the
   pair and model already there).
2. The service under gunicorn (``FACETREC_WORKERS`` workers, an admin token, the shipped
   ``FACETREC_TAKEDOWN_POLL_S``) with an open-loop homepage load (vegeta, ``--rps``) for the whole run.
3. Takedowns: for each, a user whose homepage shows an item, ``DELETE /v1/items/{id}``, then four
   threads asking that user's homepage back to back for 2 s; the figure is **served after 200**: the
   latest moment a page holding the item was answered, after the DELETE's answer (0 when none was).
   Reported p50 / p99 / max over the takedowns, with the homepage load's p50 / p95 and errors.
4. Changes sustained: batches of 100 changes (``POST /v1/items/changes``: patches of a facet the item
   tower reads, so each recomputes a vector, and of one it does not) sent back to back by 1 and by 4
   clients for ``--change-seconds``: changes per second, and the p50 / p95 of one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _checkout  # noqa: F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.server import start_gunicorn  # noqa: E402
from facetrec.es import make_client, resolve_url  # noqa: E402
from facetrec.local.node import port_is_free  # noqa: E402
from facetrec.settings import CATALOGS_DIR, STATE_ROOT, Settings  # noqa: E402
from ingest import pipeline  # noqa: E402

ROWS = CATALOGS_DIR / "synthetic" / "rows.yaml"
ADMIN = "bench-admin-token-0123456789"
MODEL = {"dim": 64, "hidden": 64, "layers": 1, "max_len": 50, "dropout": 0.1, "id_dropout": 0.2}
WORK = STATE_ROOT / "bench-item-changes"


def _call(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict | None, float]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {ADMIN}", **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:   # noqa: S310 (loopback)
            return response.status, json.loads(response.read()), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), time.perf_counter() - started


def page_items(base: str, user: str) -> list[str]:
    status, body, _ = _call("GET", f"{base}/v1/users/{user}/homepage")
    return [i["id"] for row in (body or {}).get("rows", []) for i in row["items"]] if status == 200 else []


def publish(settings: Settings, items: int, users: int) -> None:
    pipeline.step_prepare_data("synthetic", WORK, n_items=items, n_users=users, history=30, seed=5)
    pipeline.step_etl(WORK)
    pipeline.step_train(WORK, MODEL, {"epochs": 3, "patience": 3, "seed": 1}, progress=False)
    pipeline.step_embed(WORK, progress=False)
    pipeline.step_publish(WORK, settings, ROWS, progress=False)


def takedown_once(base: str, user: str, item: str, watch_s: float = 2.0, threads: int = 4) -> dict:
    """DELETE ``item``, then ask ``user``'s homepage from ``threads`` threads for ``watch_s``: the latest
    answer still holding it, in seconds after the DELETE's answer."""
    status, _, took = _call("DELETE", f"{base}/v1/items/{item}")
    assert status == 200, status
    answered = time.perf_counter()
    last_seen = [0.0]
    pages = [0]
    lock = threading.Lock()

    def watch():
        while time.perf_counter() - answered < watch_s:
            shown = item in page_items(base, user)
            with lock:
                pages[0] += 1
                if shown:
                    last_seen[0] = max(last_seen[0], time.perf_counter() - answered)

    workers = [threading.Thread(target=watch) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"served_after_200_s": last_seen[0], "delete_ms": took * 1000, "pages": pages[0]}


def changes_sustained(base: str, item_ids: list[str], clients: int, seconds: float) -> dict:
    """Batches of 100 patches back to back from ``clients`` clients for ``seconds``."""
    formats = ["audiobook", "ebook", "document", "podcast"]
    sent, latencies = [0], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(c: int):
        n = 0
        while time.perf_counter() < deadline:
            batch = []
            for j in range(100):
                item = item_ids[(c * 7919 + n * 100 + j) % len(item_ids)]
                fields = {"item_format": formats[(n + j) % 4]} if j % 2 else {"published_at": "2026-0%d-01" % (1 + n % 9)}
                batch.append({"op": "patch", "item_id": item, "item": fields})
            status, body, took = _call("POST", f"{base}/v1/items/changes", {"changes": batch}, timeout=60)
            assert status == 200, (status, body)
            with lock:
                sent[0] += len(batch)
                latencies.append(took * 1000)
            n += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    return {"clients": clients, "changes": sent[0], "changes_per_s": sent[0] / wall,
            "batch_p50_ms": float(np.percentile(latencies, 50)), "batch_p95_ms": float(np.percentile(latencies, 95))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--rps", type=float, default=20)
    parser.add_argument("--takedowns", type=int, default=40)
    parser.add_argument("--change-seconds", type=float, default=20)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    command = f"python bench/item_changes_bench.py {' '.join(sys.argv[1:])}"
    settings = Settings.from_env().replace(item_alias="bench-ic-item_index", user_alias="bench-ic-user_index",
                                           models_root=WORK / "models", rows_config=ROWS, admin_tokens=ADMIN)
    es = make_client(settings, request_timeout=600)
    if not args.reuse:
        es.indices.delete(index="bench-ic-*", ignore_unavailable=True)
        publish(settings, args.items, args.users)
    port = next(p for p in range(18100, 18200) if port_is_free(p))
    base = f"http://127.0.0.1:{port}"
    proc = start_gunicorn({"ES_URL": resolve_url(settings), "FACETREC_ITEM_ALIAS": settings.item_alias,
                           "FACETREC_USER_ALIAS": settings.user_alias, "FACETREC_ROWS_CONFIG": str(ROWS),
                           "FACETREC_MODELS_ROOT": str(settings.models_root), "FACETREC_ADMIN_TOKENS": ADMIN,
                           "FACETREC_WORKERS": os.environ.get("FACETREC_WORKERS", "2"),
                           "FACETREC_LOG_LEVEL": "warning", "FACETREC_RECALL_SAMPLE_RATE": "0"}, f"127.0.0.1:{port}")
    from loadgen import run_load_auto

    users = [f"u{i}" for i in range(200)]
    load_result = {}
    duration = args.takedowns * 2.6 + 2 * args.change_seconds + 10

    def background_load():
        urls = [f"{base}/v1/users/{u}/homepage" for u in users]
        load_result["r"] = run_load_auto(urls, rps=args.rps, duration_s=duration, timeout_s=5)   # reads are open

    try:
        loader = threading.Thread(target=background_load)
        loader.start()
        time.sleep(3)
        takedowns = []
        for n in range(args.takedowns):
            user = users[(n * 37) % len(users)]
            shown = page_items(base, user)
            if not shown:
                continue
            takedowns.append(takedown_once(base, user, shown[0]))
        items = [f"i{i}" for i in range(args.items)]
        sustained = [changes_sustained(base, items, c, args.change_seconds) for c in (1, 4)]
        loader.join()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    after = np.array([t["served_after_200_s"] for t in takedowns])
    load = load_result.get("r")
    out = {"command": command, "takedowns": len(takedowns),
           "served_after_200_s": {"p50": float(np.percentile(after, 50)), "p99": float(np.percentile(after, 99)),
                                  "max": float(after.max()), "zero_share": float((after == 0).mean())},
           "delete_p50_ms": float(np.median([t["delete_ms"] for t in takedowns])),
           "pages_watched": int(sum(t["pages"] for t in takedowns)),
           "homepage_load": {"offered_rps": args.rps, "achieved_rps": load.achieved_rps, "p50_ms": load.p50_ms,
                             "p95_ms": load.p95_ms, "errors": load.errors} if load else None,
           "changes": sustained}
    print(f"\ncommand: {command}")
    s = out["served_after_200_s"]
    print(f"{len(takedowns)} takedowns under {args.rps:g} rps of homepages ({out['pages_watched']} pages watched): "
          f"served after the 200 p50 {s['p50']:.3f} s, p99 {s['p99']:.3f} s, max {s['max']:.3f} s "
          f"({s['zero_share']:.0%} never); DELETE p50 {out['delete_p50_ms']:.0f} ms")
    if load:
        print(f"homepage load: {load.achieved_rps:.1f} rps achieved, p50 {load.p50_ms:.0f} ms, p95 {load.p95_ms:.0f} ms, "
              f"errors {load.errors}")
    for c in sustained:
        print(f"item changes, {c['clients']} client(s) of 100-change batches: {c['changes_per_s']:,.0f} changes/s "
              f"({c['changes']:,} in all), batch p50 {c['batch_p50_ms']:.0f} ms / p95 {c['batch_p95_ms']:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
