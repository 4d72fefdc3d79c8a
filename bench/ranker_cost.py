"""What the ranking stage costs the service per homepage: the Flask app in this process (its test
client) against the live MovieLens pair that `make demo` publishes, with its registered ranker.

    make demo            # publishes the pair and registers its ranker; leaves the node running
    python bench/ranker_cost.py [--pages 600]

The same users' homepages are asked with the shipped rows (catalogs/movielens-100k/rows.yaml: `for_you` ranked
over 100 candidates) and with the same rows without `rank`, interleaved in rounds so drift on this
noisy machine hits both alike. Reported per homepage: process CPU (the service's own work: parsing
the extra candidates, the features, LightGBM), wall time p50/p95 (with the node's time in it), the
ranking step alone (features + prediction) and the node requests a page makes (one user GET and
one _msearch in both: the model version is read once per generation).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
from _checkout import REPO  # noqa: E402

from app import create_app  # noqa: E402
from app.state import service_of  # noqa: E402
from facetrec.catalog.rows import RowCatalog  # noqa: E402
from facetrec.es import make_client  # noqa: E402
from facetrec.metrics import NoMetrics  # noqa: E402
from facetrec.settings import Settings  # noqa: E402


class Timings(NoMetrics):
    def __init__(self):
        self.rank: list[float] = []
        self.msearch = 0

    def timing(self, name, value, tags=()):
        if name == "homepage.rank":
            self.rank.append(value)
        elif name == "es.msearch.roundtrip":
            self.msearch += 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=600, help="homepages per variant (after 100 warm-up each)")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    settings = Settings.from_env().replace(es_request_timeout_s=10.0, recall_sample_rate=0.0)
    shipped = RowCatalog.load(REPO / "catalogs" / "movielens-100k" / "rows.yaml")
    plain = dataclasses.replace(shipped, rows={k: dataclasses.replace(r, rank_candidates=None)
                                               for k, r in shipped.rows.items()})
    es = make_client(settings)
    users = [h["_id"] for h in es.search(index=settings.user_alias, size=300, _source=False)["hits"]["hits"]]
    variants = {"ranked (for_you: rank 100)": shipped, "retrieval order (no rank)": plain}
    clients, timings = {}, {}
    for name, catalog in variants.items():
        app = create_app(settings, catalog)
        timings[name] = service_of(app).metrics = Timings()
        clients[name] = app.test_client()
        logging.getLogger("facetrec.access").setLevel(logging.WARNING)   # no access line per page on stdout
        for user in users[:100]:
            page = clients[name].get(f"/v1/users/{user}/homepage")
            assert page.status_code == 200, page.get_json()
        timings[name].rank.clear()
        timings[name].msearch = 0
    statuses = {name: clients[name].get(f"/v1/users/{users[0]}/homepage").get_json()["ranker"]["status"]
                for name in variants}
    if statuses["ranked (for_you: rank 100)"] != "applied":
        sys.exit(f"the live pair's ranker did not run ({statuses}): publish it with `make demo` first")
    cpu = {name: 0.0 for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, args.pages // args.rounds)
    for r in range(args.rounds):
        for name in variants:
            started_cpu = time.process_time()
            for i in range(per_round):
                started = time.perf_counter()
                clients[name].get(f"/v1/users/{users[(r * per_round + i) % len(users)]}/homepage")
                wall[name].append((time.perf_counter() - started) * 1000)
            cpu[name] += time.process_time() - started_cpu
    pages = per_round * args.rounds
    print(f"command: python bench/ranker_cost.py {' '.join(sys.argv[1:])}")
    print(f"{pages} homepages per variant, {len(users)} users, 6 rows (catalogs/movielens-100k/rows.yaml)\n")
    print("| variant | service CPU ms / page | wall p50 ms | wall p95 ms | ranking step p50 ms | _msearch per page |")
    print("|---|---|---|---|---|---|")
    for name in variants:
        rank = f"{statistics.median(timings[name].rank):.2f}" if timings[name].rank else "-"
        print(f"| {name} | {cpu[name] / pages * 1000:.2f} | {statistics.median(wall[name]):.2f} | "
              f"{_pct(wall[name], 0.95):.2f} | {rank} | {timings[name].msearch / pages:.2f} |")
    a, b = variants
    print(f"\nadded by the ranker: {(cpu[a] - cpu[b]) / pages * 1000:+.2f} ms service CPU per page, "
          f"{statistics.median(wall[a]) - statistics.median(wall[b]):+.2f} ms wall p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
