"""A vector partition as a field of the generation, or as an index of its own: same vectors, same graph.

    python bench/partition_layout.py --items 1000000 --value podcast [--users 50] [--candidates 100 300 1000]

The item generation behind ``bench-item_index`` (published by ``bench/serving_bench.py``) holds each
item_format value's vectors in a partition field beside every other item. This builds, from the same
synthetic catalog, an index that holds ONLY that value's items (its vector as the only vector field,
the same m / ef_construction, force-merged to one segment), then asks both the same question: the
value's row under the user filters (language=en, country=US), a walk of the partition filtered after
it, exactly as the planner's partition plan sends it. Reports per layout and num_candidates: the
node's CPU ms per search (its process, from the operating system), took p50, id recall@10 against
numpy's exact answer, and for the separate index its build seconds and bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_bench import USER_CLAUSES, pct  # noqa: E402

from facetrec.catalog.partitions import partition_field  # noqa: E402
from facetrec.es import make_client  # noqa: E402
from facetrec.serving import mips  # noqa: E402
from facetrec.settings import Settings  # noqa: E402
from ingest.embedding.synthetic import embedding_records  # noqa: E402


def build_separate(es, name: str, stored: np.ndarray, items: list[dict], settings: Settings) -> dict:
    es.indices.delete(index=name, ignore_unavailable=True)
    es.indices.create(index=name, settings={"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
                                            "translog.flush_threshold_age": "1h",
                                            "dense_vector.hnsw_enable_early_termination": settings.hnsw_early_termination},
                      mappings={"dynamic": "strict", "properties": {
                          "language": {"type": "keyword"}, "country": {"type": "keyword"},
                          "vector": {"type": "dense_vector", "dims": stored.shape[1], "similarity": "dot_product",
                                     "index_options": {"type": "hnsw", "m": settings.hnsw_m,
                                                       "ef_construction": settings.hnsw_ef_construction}}}})
    started = time.perf_counter()
    for start in range(0, len(items), 1000):
        ops = []
        for record, vector in zip(items[start:start + 1000], stored[start:start + 1000]):
            ops += [{"index": {"_index": name, "_id": record["item_id"]}},
                    {"language": record["language"], "country": record["country"], "vector": vector}]
        es.bulk(operations=ops)
    es.indices.put_settings(index=name, settings={"refresh_interval": "1s", "translog.flush_threshold_age": None})
    es.indices.refresh(index=name)
    es.options(request_timeout=3600).indices.forcemerge(index=name, max_num_segments=1)
    es.indices.refresh(index=name)
    built = time.perf_counter() - started
    size = es.indices.stats(index=name, metric="store")["_all"]["primaries"]["store"]["size_in_bytes"]
    return {"build_s": built, "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--value", default="podcast", help="the item_format value to compare")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the users per measurement")
    args = parser.parse_args()
    from cpu import es_process_cpu

    settings = Settings.from_env().replace(item_alias="bench-item_index", user_alias="bench-user_index")
    es = make_client(settings, request_timeout=600)
    items, users, item_vectors, user_vectors = embedding_records(args.items, 2000, dims=64, seed=1)
    scale = mips.max_norm(item_vectors)
    keep = np.array([r["item_format"] == args.value for r in items])
    members = [r for r, k in zip(items, keep) if k]
    stored = mips.item_vectors(item_vectors[keep], scale)
    separate = f"bench-partition-{args.value}"
    built = build_separate(es, separate, stored, members, settings)
    in_filter = np.array([r["language"] == "en" and "US" in r["country"] for r in members])
    ids = np.array([r["item_id"] for r in members])
    field = partition_field("item_format", args.value)
    print(f"{args.value}: {len(members):,} items; separate index built in {built['build_s']:.0f} s, "
          f"{built['bytes'] / 2**20:,.0f} MiB")
    print(f"\n{'layout':<22} {'candidates':>10} {'CPU ms':>7} {'took p50':>8} {'id recall':>9}")
    for candidates in args.candidates:
        for layout, index, vector_field in (("field in generation", "bench-item_index", field),
                                            ("index of its own", separate, "vector")):
            bodies, truths = [], []
            for u in range(args.users):
                seen = set(users[u]["seen_item_ids"])
                query = mips.knn_query(user_vectors[u])
                scores = stored[:, :-1] @ (np.asarray(user_vectors[u]) / np.linalg.norm(user_vectors[u]))
                order = [j for j in np.argsort(-scores) if in_filter[j] and ids[j] not in seen][:10]
                truths.append(set(ids[order]))
                bodies.append({"size": 10, "_source": False, "track_total_hits": False, "query": {"bool": {
                    "must": [{"knn": {"field": vector_field, "query_vector": query, "k": 150,
                                      "num_candidates": max(candidates, 150)}}],
                    "filter": USER_CLAUSES, "must_not": [{"ids": {"values": sorted(seen)}}]}}})
            for body in bodies:      # warm
                es.search(index=index, body=body)
            before = es_process_cpu(es)
            took, found = [], []
            for _ in range(args.repeat):
                for body, truth in zip(bodies, truths):
                    response = es.search(index=index, body=body)
                    took.append(response["took"])
                    found.append(len({h["_id"] for h in response["hits"]["hits"]} & truth) / max(len(truth), 1))
            after = es_process_cpu(es)
            cpu_ms = (after.cpu_ms - before.cpu_ms) / (args.users * args.repeat)
            print(f"{layout:<22} {candidates:>10} {cpu_ms:>7.2f} {pct(took, 50):>8.1f} {np.mean(found):>9.3f}")
    print(f"\ncommand: python bench/partition_layout.py {' '.join(sys.argv[1:])}")
    es.indices.delete(index=separate, ignore_unavailable=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
