"""Where a homepage's node CPU goes: the page's ``_msearch`` as the service plans it, against variants
of it, each measured as node CPU per page (the node's pid) and id recall per row, in one run.

    python bench/page_cost.py --items 1000000 [--users 200] [--pages 300] [--variants as_served no_source ...]

Serves the ``bench-*`` pair that ``bench/serving_bench.py`` published (same ``--items``), with the
user filters ``language=en&country=US``. Variants (each a rewrite of the planned lines):

- ``as_served``: the service's searches;
- ``no_source``: no ``_source`` fetched anywhere (what fetching the rendered fields costs);
- ``searches_only``: the page's searches with ``size: 0`` and no aggregation (the walks and scans,
  without collecting or fetching);
- ``fixed``: as many ``match_all`` searches of ``size: 0`` as the page has (the fixed cost per search);
- ``candidates_N``: every walk of the shared search with ``num_candidates`` N;
  ``candidates_N_<value>_M...``: the partition of ``<value>`` walked with M;
- ``shared_only`` / ``own_only``: just the shared search, or just the rows searched alone.

Recall is the rows' first ``size`` hits against numpy's exact top under the same filters.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import _checkout  # noqa: F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
from cpu import es_process_cpu, local_node_pids
from serving_bench import ROWS_CONFIG, ExactRows, page_searches

from facetrec.catalog.counts import StatsCache
from facetrec.catalog.rows import RowCatalog
from facetrec.es import make_client
from facetrec.serving.homepage import SearchConfig
from facetrec.serving.page_search import is_shared_search
from facetrec.settings import Settings
from ingest.embedding.synthetic import embedding_records


def _bodies(lines: list[dict]):
    return lines[1::2]


def no_source(lines: list[dict]) -> list[dict]:
    out = copy.deepcopy(lines)
    for body in _bodies(out):
        body["_source"] = False
        for agg in body.get("aggs", {}).values():
            top = agg.get("aggs", {}).get("top", {}).get("top_hits")
            if top is not None:
                top["_source"] = False
    return out


def _hit_targets(lines: list[dict]):
    """What fetches hits in the page's searches: each body that returns hits, each bucket's top_hits."""
    for body in _bodies(lines):
        if body.get("size") != 0:
            yield body
        for agg in body.get("aggs", {}).values():
            yield agg.get("aggs", {}).get("top", {}).get("top_hits", {})


def ids_only(lines: list[dict]) -> list[dict]:
    """Each hit's id from doc values and nothing stored: what fetching a hit costs beyond its id."""
    out = copy.deepcopy(lines)
    for target in _hit_targets(out):
        target["_source"] = False
        target["stored_fields"] = "_none_"
        target["docvalue_fields"] = ["item_id"]
    return out


def docvalues(lines: list[dict]) -> list[dict]:
    """Each hit's rendered fields read from doc values (title from title.keyword) instead of _source."""
    out = copy.deepcopy(lines)
    for target in _hit_targets(out):
        fields = [f for f in target.get("_source", []) if isinstance(target.get("_source"), list)]
        target["_source"] = False
        target["stored_fields"] = "_none_"
        target["docvalue_fields"] = [{"field": "title.keyword"} if f == "title" else
                                     {"field": f, "format": "yyyy-MM-dd"} if f == "published_at" else f
                                     for f in fields]
    return out


def searches_only(lines: list[dict]) -> list[dict]:
    out = copy.deepcopy(lines)
    for body in _bodies(out):
        body["size"] = 0
        body.pop("aggs", None)
    return out


def fixed(lines: list[dict]) -> list[dict]:
    return [x for header in lines[0::2] for x in (header, {"size": 0, "track_total_hits": False,
                                                             "query": {"match_all": {}}})]


def candidates(n: int, per_value: dict[str, int] | None = None):
    """Every walk of the shared search with num_candidates ``n``, or for a partition whose field names
    a value of ``per_value``, that value's."""
    def rewrite(lines: list[dict]) -> list[dict]:
        out = copy.deepcopy(lines)
        for body in _bodies(out):
            if not is_shared_search(body):
                continue
            for knn in _knns(body["query"]):
                wanted = next((c for value, c in (per_value or {}).items() if f"__{value}_" in knn["field"]), n)
                knn["num_candidates"] = max(wanted, knn["k"])
        return out
    return rewrite


def _knns(node):
    if isinstance(node, dict):
        if "knn" in node and isinstance(node["knn"], dict) and "field" in node["knn"]:
            yield node["knn"]
        for value in node.values():
            yield from _knns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _knns(value)


def only(shared: bool):
    def rewrite(lines: list[dict]) -> list[dict]:
        pairs = list(zip(lines[0::2], lines[1::2]))
        return [x for h, b in pairs if is_shared_search(b) == shared for x in (h, b)]
    return rewrite


def variant(name: str):
    fixed_variants = {"as_served": lambda lines: lines, "no_source": no_source, "ids_only": ids_only, "docvalues": docvalues,
                      "searches_only": searches_only,
                      "fixed": fixed, "shared_only": only(True), "own_only": only(False)}
    if name in fixed_variants:
        return fixed_variants[name]
    if name.startswith("candidates_"):   # candidates_1000 or candidates_1000_ebook_3000_podcast_500
        parts = name.split("_")[1:]
        return candidates(int(parts[0]), {value: int(c) for value, c in zip(parts[1::2], parts[2::2])})
    raise SystemExit(f"unknown variant {name!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--quality-users", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1000, help="pages as served before the first variant (JIT)")
    parser.add_argument("--variants", nargs="+", default=["as_served", "no_source", "searches_only", "fixed",
                                                          "shared_only", "own_only"])
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--rows", type=Path, default=ROWS_CONFIG, help="the row config (default: the synthetic one)")
    args = parser.parse_args()
    settings = Settings.from_env().replace(item_alias="bench-item_index", user_alias="bench-user_index")
    es = make_client(settings, request_timeout=600)
    pids = local_node_pids(es)
    if not pids:
        raise SystemExit("page_cost reads the node's CPU from its pid: run it beside a local node")
    catalog = RowCatalog.load(args.rows)
    items, users, item_vectors, user_vectors = embedding_records(args.items, max(args.users, args.quality_users),
                                                                 dims=64, seed=1)
    exact = ExactRows(catalog, items, item_vectors)
    target = SearchConfig.from_settings(settings, request_timeout_s=5.0,
                                        stats=StatsCache(list(catalog.rows.values()), catalog.user_filters))
    pages = [page_searches(es, target, catalog, users[u]["user_id"])[1] for u in range(args.users)]
    rows = catalog.homepage_rows()
    index = next(iter(es.indices.get_alias(name=settings.item_alias)))
    segments = len(es.cat.segments(index=index, format="json"))
    print(f"{settings.item_alias} -> {index}: {segments} segments; node CPU from pid(s) {pids}")
    print(f"{'variant':<16} {'CPU ms/page':>11} {'took p50':>8}  " + " ".join(f"{r.id[:11]:>11}" for r in rows))
    for i in range(args.warmup):
        es.msearch(searches=pages[i % len(pages)].lines)
    results = {}
    for name in args.variants:
        rewrite = variant(name)
        bodies = [rewrite(p.lines) for p in pages]
        for lines in bodies[:50]:   # warm
            es.msearch(searches=lines)
        before = es_process_cpu(es, pids)
        took = [es.msearch(searches=bodies[i % len(bodies)])["took"] for i in range(args.pages)]
        cpu = (es_process_cpu(es, pids).cpu_ms - before.cpu_ms) / args.pages
        recall = {}
        if name not in ("searches_only", "fixed", "shared_only", "own_only", "ids_only", "docvalues"):
            found = {r.id: [] for r in rows}
            for u in range(args.quality_users):
                page = pages[u]
                responses = page.split(es.msearch(searches=rewrite(page.lines))["responses"])
                for row, response in zip(rows, responses):
                    got = [h["_id"] for h in response["hits"]["hits"][:row.size]]
                    found[row.id].append(exact.recall(row.id, user_vectors[u], users[u]["seen_item_ids"], row.size,
                                                      got)[0])
            recall = {r: float(np.mean(v)) for r, v in found.items()}
        results[name] = {"cpu_ms_per_page": cpu, "took_p50_ms": float(np.median(took)), "id_recall": recall}
        print(f"{name:<16} {cpu:>11.1f} {np.median(took):>8.1f}  " +
              " ".join(f"{recall.get(r.id, float('nan')):>11.3f}" for r in rows))
    print(f"\ncommand: python bench/page_cost.py {' '.join(sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"segments": segments, "variants": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
