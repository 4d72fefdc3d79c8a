"""The README's main job (`make demo`, i.e. `facetrec demo`):

1. start the local Elasticsearch node (unless ES_URL points at a cluster),
2. run the nightly pipeline on the catalog (Spark ETL, training, evaluation, embedding, a new
   generation, validation, one alias swap): MovieLens-100k by default (rows: catalogs/movielens-100k/rows.yaml),
   or the synthetic Scribd-like catalog with ``--catalog synthetic`` (`make demo CATALOG=synthetic`;
   rows: catalogs/synthetic/rows.yaml, with the user filters language and country),
3. start the service under gunicorn on 127.0.0.1:8000 with that catalog's rows,
4. print the evaluation table and sample homepages for a few users,

and leave the service and the node running, saying how to stop them. A demo publishes one pair of
generations (so `facetrec index rollback` has nothing to roll back to until the next publish).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from facetrec.local import node as es_local
from facetrec.settings import ARTIFACTS_ROOT, PACKAGE_ROOT, STATE_ROOT, Settings

SERVICE_PID = STATE_ROOT / "service.pid"
SERVICE_LOG = STATE_ROOT / "service.log"


def ensure_cluster(settings: Settings) -> Settings:
    """Use ES_URL if set; else reuse the recorded local node if it is up; else start one."""
    if settings.es_url:
        return settings
    info = es_local.status(settings.local_es_home)
    if info["running"] and info["health"] in ("green", "yellow"):
        print(f"facetrec: using the local node already running at {info['url']}")
        return settings
    if info.get("url"):
        es_local.stop(settings.local_es_home)
    es_local.start(home=settings.local_es_home)
    return settings


def stop_service() -> bool:
    if not SERVICE_PID.exists():
        return False
    pid = int(SERVICE_PID.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    SERVICE_PID.unlink(missing_ok=True)
    return True


def start_service(settings: Settings, rows_config: Path, bind: str) -> str:
    from app.server import start_gunicorn

    stop_service()
    env = {"FACETREC_ROWS_CONFIG": str(rows_config), **({"ES_URL": settings.es_url} if settings.es_url else {})}
    SERVICE_LOG.parent.mkdir(parents=True, exist_ok=True)
    proc = start_gunicorn(env, bind, log_path=SERVICE_LOG)
    SERVICE_PID.write_text(str(proc.pid))
    return f"http://{bind}"


def print_homepage(url: str, user_id: str) -> None:
    with urllib.request.urlopen(f"{url}/v1/users/{user_id}/homepage?size=5", timeout=10) as response:
        page = json.loads(response.read())
    print(f"\nhomepage of user {user_id} (generation {page['generation']}):")
    for row in page["rows"]:
        print(f"  {row['title']} [{row['source']}]")
        for item in row["items"]:
            print(f"      {item['score']:+7.3f}  {item.get('title', item['id'])}")


# catalog -> (data set of the nightly pipeline, its name in the output, the demo's work directory)
CATALOGS = {"movielens": ("movielens-100k", "MovieLens-100k", "demo"),
            "synthetic": ("synthetic", "the synthetic catalog", "demo-synthetic")}


def run_demo(catalog: str = "movielens") -> int:
    from facetrec.es import make_client
    from ingest.pipeline import DATASET_ROWS, run_pipeline

    dataset, label, work = CATALOGS[catalog]
    started = time.perf_counter()
    settings = ensure_cluster(Settings.from_env())
    rows_config = DATASET_ROWS[dataset]
    work_dir = ARTIFACTS_ROOT / work
    summary = run_pipeline(dataset, work_dir, settings, rows_config=rows_config)

    url = start_service(settings, rows_config, os.environ.get("FACETREC_BIND", "127.0.0.1:8000"))
    from ingest.embedding.evaluate import comparison_table

    print(f"\noffline evaluation on {label} (leave-last-out, full ranking, seen items excluded):")
    print(comparison_table(summary["evaluate"]))
    es = make_client(settings, request_timeout=30)
    users = [h["_id"] for h in es.search(index=settings.user_alias, size=3,
                                         source=False)["hits"]["hits"]]
    for user_id in users[:3]:
        print_homepage(url, user_id)
    print_homepage(url, "a-brand-new-user")
    print(f"\nfacetrec: main job done in {time.perf_counter() - started:.0f}s")
    print(f"facetrec: service on {url}/ (HTML page), {url}/docs (the API) and {url}/v1/users/<id>/homepage "
          f"({label}: rows from {rows_config.relative_to(PACKAGE_ROOT)}); Elasticsearch at "
          f"{settings.es_url or es_local.status(settings.local_es_home).get('url')}")
    print("facetrec: this run published one pair of generations (`facetrec index status`); a rollback needs an "
          "older one, which the next `facetrec pipeline run` makes")
    print("facetrec: both keep running; stop them with `make stop`")
    return 0


def cmd_demo(args, settings: Settings) -> int:
    if args.action == "stop":
        print("facetrec: service stopped" if stop_service() else "facetrec: no service was running")
        return 0
    return run_demo(args.catalog)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: local node, nightly pipeline, service, sample homepages "
                                    "(MovieLens-100k; --catalog synthetic; `demo stop` stops the service)",
                       description="The main job (`make demo`): start the local Elasticsearch node (unless ES_URL is "
                                   "set), run the nightly pipeline on the catalog, start the service on "
                                   "127.0.0.1:8000 (FACETREC_BIND) and print sample homepages; the node and the "
                                   "service keep running (`make stop`).")
    p.add_argument("action", nargs="?", choices=["run", "stop"], default="run",
                   help="run the demo (default) or stop the service it started")
    p.add_argument("--catalog", choices=sorted(CATALOGS), default="movielens",
                   help="movielens: MovieLens-100k with catalogs/movielens-100k/rows.yaml (default); synthetic: the Scribd-like "
                        "synthetic catalog with catalogs/synthetic/rows.yaml and its user filters (language, country)")
    p.set_defaults(func=cmd_demo)
