"""Where the service's own CPU goes on a homepage: the Flask app in this process (its test client,
no gunicorn) against a small synthetic pair, profiled with cProfile.

    facetrec-es start --port 9401 --data /tmp/esprof --heap 2g
    ES_URL=http://127.0.0.1:9401 python bench/service_profile.py [--items 20000] [--pages 600]

Publishes ``prof-item_index`` / ``prof-user_index`` once (``--items`` synthetic items, the shipped
rows), serves warm-up pages, then ``--pages`` homepages profiled and as many unprofiled. Prints the
process CPU ms per page (unprofiled: the figure; profiled: inflated by the profiler) and the
profiled time that is not waiting on the node, grouped by where it is spent: the HTTP client stack,
reading the node's JSON, Flask/Werkzeug, facetrec's own code, the rest.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
from _checkout import REPO  # noqa: E402

from app import create_app  # noqa: E402
from facetrec.catalog.rows import RowCatalog  # noqa: E402
from facetrec.es import make_client  # noqa: E402
from facetrec.settings import Settings  # noqa: E402
from ingest.embedding.synthetic import embedding_records  # noqa: E402
from ingest.indexing.reindex import run_reindex  # noqa: E402

GROUPS = (("waiting on the node (socket)", ("recv", "socket", "sendall")),
          ("HTTP client (elastic_transport, urllib3, http.client)", ("elastic_transport", "urllib3", "http/client",
                                                                      "email/", "elasticsearch/")),
          ("Flask / Werkzeug", ("flask", "werkzeug")),
          ("facetrec + app", (f"{REPO}/facetrec", f"{REPO}/app")),
          ("orjson", ("orjson",)),
          ("logging / json", ("logging", "json/")))


def group_of(filename: str, name: str) -> str:
    for label, keys in GROUPS:
        if any(k in filename or k in name for k in keys):
            return label
    return "other (builtins, dataclasses, ...)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=600)
    args = parser.parse_args()
    settings = Settings.from_env().replace(item_alias="prof-item_index", user_alias="prof-user_index",
                                           partition_min_docs=max(1, args.items // 10), es_request_timeout_s=10.0,
                                           recall_sample_rate=0.0)
    es = make_client(settings, request_timeout=300)
    catalog = RowCatalog.load(REPO / "catalogs" / "synthetic" / "rows.yaml")
    if not es.indices.exists_alias(name=settings.item_alias):
        items, users, *_ = embedding_records(n_items=args.items, n_users=300, dims=64, seed=3)
        run_reindex(es, settings, catalog, items=items, users=users, model_version="profile", progress=False,
                    sample_users=2)
    client = create_app(settings, catalog).test_client()
    users = [h["_id"] for h in es.search(index=settings.user_alias, size=200, _source=False)["hits"]["hits"]]
    url = "/v1/users/{}/homepage?language=en&country=US"
    for user in users:
        assert client.get(url.format(user)).status_code == 200
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    for i in range(args.pages):
        client.get(url.format(users[i % len(users)]))
    profile.disable()
    profiled = (time.process_time() - started) / args.pages * 1000
    started = time.process_time()
    for i in range(args.pages):
        client.get(url.format(users[i % len(users)]))
    plain = (time.process_time() - started) / args.pages * 1000
    print(f"command: python bench/service_profile.py {' '.join(sys.argv[1:])}")
    print(f"process CPU ms per homepage: {plain:.2f} unprofiled, {profiled:.2f} profiled")
    groups: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in pstats.Stats(profile).stats.items():
        label = group_of(filename, name)
        groups[label] = groups.get(label, 0.0) + own
    print("\nprofiled time per page by where it is spent (own time of each function):")
    for label, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<58} {seconds / args.pages * 1000:6.2f} ms")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
