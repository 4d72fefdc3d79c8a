"""Does the inner-product -> nearest-neighbour reduction lift filtered HNSW recall on our vectors?

    python bench/mips_reduction.py --items 100000 --factors 10 30

Loads the same synthetic item vectors into two HNSW indices and asks both the homepage's row
queries (user filters language=en, country=US + each row's filter, seen items excluded):

- ``raw``: the model's vectors as they are, ``max_inner_product``;
- ``reduced``: each item vector x scaled by the largest norm M and given one more coordinate,
  [x / M, sqrt(1 - |x|^2 / M^2)], so every item is a unit vector; the query is [q / |q|, 0].
  Then dot(item', query') = (x . q) / (M |q|): the same ranking as the raw inner product, but a
  cosine/``dot_product`` search, which proximity graphs handle well.

Prints id recall@10 and score recall per row against numpy exact answers, and p50 ``took``.
The evidence for the reduction the pipeline now applies to graph indices (``facetrec.serving.mips``,
``FACETREC_MIPS_REDUCTION``); this bench builds both forms itself, whatever that setting says.
"""

from __future__ import annotations

import argparse
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np
from elasticsearch import helpers
from serving_bench import USER_CLAUSES, ExactRows

from facetrec.catalog.rows import RowCatalog, row_filter
from facetrec.es import make_client
from facetrec.serving import mips
from facetrec.serving.row_queries import num_candidates
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT
from facetrec.settings import Settings
from ingest.embedding.synthetic import embedding_records

FACETS = {"item_format": "keyword", "language": "keyword", "country": "keyword", "categories": "keyword",
          "published_at": "date"}


def create_and_load(es, name: str, items: list[dict], vectors: np.ndarray, similarity: str,
                    m: int = 16, ef_construction: int = 100) -> float:
    es.options(ignore_status=404).indices.delete(index=name)
    props = {field: {"type": kind} for field, kind in FACETS.items()}
    props["v"] = {"type": "dense_vector", "dims": vectors.shape[1], "similarity": similarity,
                  "index_options": {"type": "hnsw", "m": m, "ef_construction": ef_construction}}
    es.indices.create(index=name, settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": -1},
                      mappings={"properties": props})
    started = time.perf_counter()
    actions = ({"_index": name, "_id": r["item_id"], "_source": {**{f: r[f] for f in FACETS if f in r},
                                                                  "v": vectors[i].tolist()}}
               for i, r in enumerate(items))
    for ok, _ in helpers.parallel_bulk(es, actions, thread_count=2, chunk_size=1000):
        assert ok
    es.indices.refresh(index=name)
    es.indices.forcemerge(index=name, max_num_segments=1)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--factors", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--m", type=int, default=16, help="HNSW graph degree")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=["raw", "reduced"], choices=["raw", "reduced"])
    args = parser.parse_args()

    es = make_client(Settings.from_env(), request_timeout=1800)
    catalog = RowCatalog.load(REPO_ROOT / "catalogs" / "synthetic" / "rows.yaml")
    items, users, item_vectors, user_vectors = embedding_records(args.items, 2_000, dims=64, seed=1)
    for r in items:
        r["published_at"] = str(r["published_at"])[:10]
    exact = ExactRows(catalog, items, item_vectors)
    variants = {"raw": (item_vectors, "max_inner_product", lambda q: q),
                "reduced": (mips.item_vectors(item_vectors, mips.max_norm(item_vectors)), "dot_product",
                            lambda q: np.asarray(mips.knn_query(q)))}
    variants = {name: variants[name] for name in args.variants}
    print(f"command: python bench/mips_reduction.py {' '.join(sys.argv[1:])}")
    print(f"{'variant':<8} {'load+merge s':>12}")
    for name, (vectors, similarity, _) in variants.items():
        print(f"{name:<8} {create_and_load(es, f'mips-{name}', items, vectors, similarity, args.m, args.ef_construction):>12.0f}", flush=True)

    print(f"\n{'variant':<8} {'factor':>6} {'row':<13} {'id recall':>9} {'score rec':>9} {'took p50':>8}")
    for name, (_, _, to_query) in variants.items():
        for factor in args.factors:
            for row in catalog.homepage_rows():
                ids, scores, took = [], [], []
                for u in range(args.users):
                    seen = users[u]["seen_item_ids"]
                    k = row.size + len(seen)
                    body = {"size": k, "_source": False, "query": {"knn": {
                        "field": "v", "query_vector": to_query(user_vectors[u]).tolist(), "k": k,
                        "num_candidates": num_candidates(k, factor), "filter": row_filter(row, USER_CLAUSES)}}}
                    result = es.search(index=f"mips-{name}", body=body)
                    seen_set = set(seen)
                    got = [h["_id"] for h in result["hits"]["hits"] if h["_id"] not in seen_set][:row.size]
                    took.append(result["took"])
                    id_recall, score_recall = exact.recall(row.id, user_vectors[u], seen, row.size, got)
                    ids.append(id_recall)
                    scores.append(score_recall)
                print(f"{name:<8} {factor:>6} {row.id:<13} {np.mean(ids):>9.3f} {np.nanmean(scores):>9.4f} "
                      f"{np.percentile(took, 50):>8.1f}", flush=True)
    for name in variants:
        es.indices.delete(index=f"mips-{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
