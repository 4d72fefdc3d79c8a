"""Where does a homepage's Elasticsearch time go? Per-row ``took`` under controlled variants.

    python bench/profile_homepage.py --items 1000000 --index-type hnsw [--reuse] [--users 40]

Publishes (or with --reuse, reuses) the synthetic catalog behind the ``bench-*`` aliases, then
sends each homepage row of --users users as its own search (so ``took`` is the row's alone), once
per variant of the request body:

- ``as_served``: the bodies the service sends (per row config: a knn query whose filter is the
  same for every user, seen ids removed around it; or exact ``script_score``);
- ``seen_in_filter``: the form served before: a top-level ``knn`` section whose filter also holds
  the user's seen ids (unique per user, so its bitset is never reused);
- ``knn_section``: the cacheable filter in a top-level ``knn`` section (an extra dfs phase), seen
  ids as a post-filter;
- ``script_nested``: for script_score rows, the user + row filters as one inner clause (the same
  for every user) with the seen ids beside it;
- ``no_source``: ``_source: false`` (no stored-field fetch);
- ``nc_x``: ``num_candidates`` = k * x;
- ``graph``, ``exact``: every knn row on the HNSW field, or on the generation's flat copy (an exact
  scan of the row's filtered set; the rows marked ``exact`` in the row config are served so).

Each variant is measured with the filter cache cleared before every request (``cold``) and
again after one warm-up pass (``warm``). Prints p50 ``took`` per row and per homepage (sum of
rows), and the profile API's breakdown of one row. ``--sweep 10 50 100`` adds, per row, id recall
and score recall against numpy exact answers (seen items excluded) for each num_candidates factor
on the graph, and for the exact scan when the generation has the flat copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
from serving_bench import USER_CLAUSES, ExactRows, pct  # the serving benchmark's user filters and exact answers

from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.rows import RowCatalog
from facetrec.es import make_client, script_lang
from facetrec.serving.homepage import SearchConfig, fetch_user
from facetrec.serving.page_search import build_searches
from facetrec.serving.row_queries import num_candidates as row_num_candidates
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT
from facetrec.settings import Settings
from ingest.embedding.synthetic import embedding_records
from ingest.indexing.reindex import run_reindex


def _knn(body: dict) -> dict:
    """The knn clause of a served knn row body (a knn query, alone or inside bool.must)."""
    query = body["query"]
    return query["knn"] if "knn" in query else query["bool"]["must"][0]["knn"]


def _seen(body: dict) -> list:
    query = body["query"]
    return [] if "knn" in query else query["bool"]["must_not"][0]["ids"]["values"]


def seen_ids_in_filter(body: dict) -> dict:
    """The form served before: a top-level knn section whose filter also holds the seen ids."""
    if "script_score" in body["query"]:
        return body
    knn = copy.deepcopy(_knn(body))
    seen = _seen(body)
    knn["k"] = body["size"]
    knn["num_candidates"] = max(body["size"] * 10, 100)
    if seen:
        knn["filter"]["bool"]["must_not"].append({"ids": {"values": seen}})
    return {**{k: v for k, v in body.items() if k != "query"}, "knn": knn}


def knn_section(body: dict) -> dict:
    """The cacheable filter, but as a top-level knn section (an extra dfs phase) with a post-filter."""
    if "script_score" in body["query"]:
        return body
    out = {k: v for k, v in copy.deepcopy(body).items() if k != "query"}
    out["knn"] = copy.deepcopy(_knn(body))
    if _seen(body):
        out["post_filter"] = {"bool": {"must_not": [{"ids": {"values": _seen(body)}}]}}
    return out


def no_source(body: dict) -> dict:
    return {**copy.deepcopy(body), "_source": False}


def num_candidates(factor: int):
    """``num_candidates`` as the service sets it for a row factor (``facetrec.catalog.rows.num_candidates``:
    the row's k on the page x factor, at least 100 and its neighbours). Before 2026-12-01 this was
    the neighbours (k + seen items) x factor: 1.3-3x more candidates for the same label."""
    def apply(body: dict) -> dict:
        body = copy.deepcopy(body)
        if "script_score" not in body["query"]:
            knn = _knn(body)
            knn["num_candidates"] = row_num_candidates(body["size"], factor, at_least=knn["k"])
        return body
    return apply


def on_field(field: str):
    """Every knn row on ``field``: the graph (``item_embed``) or the flat copy (``item_embed_exact``)."""
    def apply(body: dict) -> dict:
        body = copy.deepcopy(body)
        if "script_score" not in body["query"]:
            knn = _knn(body)
            knn["field"] = field
            if field == EXACT_VECTOR_FIELD:
                knn.pop("rescore_vector", None)
        return body
    return apply


def script_nested_filter(body: dict) -> dict:
    """script_score with the user + row filters as ONE inner clause (the same for every user, so the
    query cache can keep it) and the seen ids beside it, instead of one flat conjunction."""
    if "script_score" not in body.get("query", {}):
        return body
    body = copy.deepcopy(body)
    inner = body["query"]["script_score"]["query"]["bool"]
    seen = [c for c in inner["must_not"] if "ids" in c]
    shared = {"bool": {"filter": inner["filter"], "must_not": [c for c in inner["must_not"] if "ids" not in c]}}
    body["query"]["script_score"]["query"] = {"bool": {"filter": [shared], "must_not": seen}}
    return body


VARIANTS = {"as_served": lambda b: b, "script_nested": script_nested_filter, "seen_in_filter": seen_ids_in_filter, "knn_section": knn_section,
            "no_source": no_source, "nc_x2": num_candidates(2), "nc_x50": num_candidates(50),
            "graph": on_field(ITEM_VECTOR_FIELD), "exact": on_field(EXACT_VECTOR_FIELD)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--index-type", default="hnsw")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--reuse", action="store_true", help="use the bench-* generation already loaded")
    parser.add_argument("--mode", choices=["knn", "script_score"], help="force one mode on every row "
                        "(default: each row's configured retrieval)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sweep", nargs="*", type=int, default=[], metavar="FACTOR",
                        help="num_candidates factors for the recall sweep")
    args = parser.parse_args()

    settings = Settings.from_env().replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                           index_type=args.index_type)
    catalog = RowCatalog.load(REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml")
    es = make_client(settings, request_timeout=900)
    items = users = None
    if not args.reuse or args.sweep:
        items, users, item_vectors, user_vectors = embedding_records(args.items, 2_000, dims=64, seed=1)
    if not args.reuse:
        es.indices.delete(index="bench-*", ignore_unavailable=True)
        run_reindex(es, settings, catalog, items=items, users=users, model_version="bench", sample_users=5,
                    expected_items=len(items), expected_users=len(users))
    segments = es.indices.segments(index=settings.item_alias)
    n_segments = sum(len(s["segments"]) for shards in segments["indices"].values() for shard in shards["shards"].values() for s in shard)
    user_ids = [h["_id"] for h in es.search(index=settings.user_alias, size=args.users, source=False,
                                            sort=["_doc"])["hits"]["hits"]]
    target = SearchConfig.from_settings(settings, default_mode="knn", dedupe_across_rows=True, script_lang="auto",
                                  request_timeout_s=30.0)
    rows = catalog.homepage_rows()
    bodies = []  # per user: the served row bodies
    for user_id in user_ids:
        user = fetch_user(es, settings.user_alias, user_id, 5.0)
        searches = build_searches(rows, user, USER_CLAUSES, target, mode=args.mode, script_lang=script_lang(es))
        bodies.append([searches[i + 1] for i in range(0, len(searches), 2)])
    print(f"command: python bench/profile_homepage.py {' '.join(sys.argv[1:])}")
    print(f"item index: {es.count(index=settings.item_alias)['count']:,} docs in {n_segments} segment(s), "
          f"{args.index_type}; {len(user_ids)} users x {len(rows)} rows; p50 took in ms")

    table = {}
    for variant in args.variants:
        change = VARIANTS[variant]
        for cache in ("cold", "warm"):
            took = {row.id: [] for row in rows}
            for user_bodies in bodies:
                for row, body in zip(rows, user_bodies):
                    if cache == "cold":
                        es.indices.clear_cache(index=settings.item_alias, query=True, request=True)
                    took[row.id].append(es.search(index=settings.item_alias, body=change(body))["took"])
            table[(variant, cache)] = {row_id: pct(v, 50) for row_id, v in took.items()}
            if cache == "cold":  # one warm-up pass, then the warm measurement reuses what it built
                for user_bodies in bodies:
                    for body in user_bodies:
                        es.search(index=settings.item_alias, body=change(body))
    header = f"{'variant':<12} {'cache':<5} " + " ".join(f"{r.id[:11]:>11}" for r in rows) + f" {'homepage':>9}"
    print(header)
    for (variant, cache), per_row in table.items():
        print(f"{variant:<12} {cache:<5} " + " ".join(f"{per_row[r.id]:>11.1f}" for r in rows)
              + f" {sum(per_row.values()):>9.1f}")

    if args.sweep:
        sweep(es, settings, rows, bodies, user_ids, items, users, item_vectors, user_vectors, args.sweep)

    body = bodies[0][0]
    es.indices.clear_cache(index=settings.item_alias, query=True, request=True)
    profile = es.search(index=settings.item_alias, body={**body, "profile": True})["profile"]
    print("\nprofile of row", rows[0].id, "(first user, cold cache):")
    print(json.dumps(_summarize(profile), indent=2)[:4000])
    return 0


def sweep(es, settings, rows, bodies, user_ids, items, users, item_vectors, user_vectors, factors) -> None:
    """Recall per row against numpy exact answers, for each num_candidates factor (warm cache)."""
    exact = ExactRows(RowCatalog.load(REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml"), items, item_vectors)
    by_id = {u["user_id"]: i for i, u in enumerate(users)}
    print(f"\n{'factor':>6} {'row':<13} {'id recall':>9} {'score rec':>9} {'took p50':>8}")
    mapping = next(iter(es.indices.get_mapping(index=settings.item_alias).values()))["mappings"]
    passes = [(str(factor), lambda b, f=factor: num_candidates(f)(on_field(ITEM_VECTOR_FIELD)(b))) for factor in factors]
    if EXACT_VECTOR_FIELD in mapping["properties"]:
        passes.append(("exact", on_field(EXACT_VECTOR_FIELD)))
    for factor, change in passes:
        for r, row in enumerate(rows):
            id_rec, score_rec, took = [], [], []
            for user_id, user_bodies in zip(user_ids, bodies):
                u = by_id[user_id]
                result = es.search(index=settings.item_alias, body=change(user_bodies[r]))
                got = [h["_id"] for h in result["hits"]["hits"][:row.size]]
                took.append(result["took"])
                id_recall, score_recall = exact.recall(row.id, user_vectors[u], users[u]["seen_item_ids"], row.size, got)
                id_rec.append(id_recall)
                score_rec.append(score_recall)
            print(f"{factor:>6} {row.id:<13} {np.mean(id_rec):>9.3f} {np.nanmean(score_rec):>9.4f} {pct(took, 50):>8.1f}")


def _summarize(profile: dict) -> list:
    """The profile API's tree reduced to (phase, query type, time ms, vector ops)."""
    out = []
    for shard in profile["shards"]:
        for knn in (shard.get("dfs") or {}).get("knn", []):
            out.append({"phase": "dfs.knn", "vector_operations_count": knn.get("vector_operations_count"),
                        "query": [(q["type"], round(q["time_in_nanos"] / 1e6, 2)) for q in knn.get("query", [])],
                        "rewrite_ms": round(knn.get("rewrite_time", 0) / 1e6, 2)})
        for search in shard.get("searches", []):
            out.append({"phase": "query", "query": [(q["type"], round(q["time_in_nanos"] / 1e6, 2))
                                                    for q in search.get("query", [])]})
        fetch = shard.get("fetch")
        if fetch:
            out.append({"phase": "fetch", "ms": round(fetch["time_in_nanos"] / 1e6, 2)})
    return out


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"\ndone in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    sys.exit(code)
