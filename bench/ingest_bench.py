"""Ingest throughput into a new generation: docs/s per index type and catalog size.

    python bench/ingest_bench.py --sizes 100000 1000000 --index-types flat int8_hnsw
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from facetrec.es import make_client
from facetrec.settings import Settings
from ingest.indexing import templates
from ingest.indexing.bulk_load import bulk_load
from ingest.indexing.generations import Generations
from ingest.embedding.synthetic import generate_catalog, item_record


def records(n: int, dims: int, seed: int = 0):
    catalog = generate_catalog(n, seed)
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dims)).astype(np.float32)
    for i in range(n):
        yield {**item_record(catalog, i), "item_embed": vectors[i]}


def run(sizes, index_types, dims: int) -> list[dict]:
    base = Settings.from_env()
    es = make_client(base, request_timeout=600)
    results = []
    for index_type in index_types:
        for n in sizes:
            settings = base.replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                    index_type=index_type, vector_dims=dims)
            templates.apply(es, settings, "bench")
            gens = Generations(es, settings)
            es.indices.delete(index="bench-item_index-*", ignore_unavailable=True)
            index = gens.create("item", "20260101-000000", "bench")
            started = time.perf_counter()
            report = bulk_load(es, index, "item", records(n, dims), generation="bench", dims=dims, total=n)
            loaded = time.perf_counter() - started
            gens.finish_loading(index)
            total = time.perf_counter() - started
            results.append({"index_type": index_type, "docs": n, "load_s": loaded, "load_docs_s": n / loaded,
                            "with_refresh_s": total, "docs_s": n / total, "failed": report.failed_count})
            es.indices.delete(index=index)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--index-types", nargs="+", default=["flat", "int8_hnsw"])
    parser.add_argument("--dims", type=int, default=64)
    args = parser.parse_args()
    results = run(args.sizes, args.index_types, args.dims)
    print(f"\ncommand: python bench/ingest_bench.py {' '.join(sys.argv[1:])}")
    print(f"{'index_type':<11} {'docs':>9} {'bulk s':>8} {'bulk docs/s':>12} {'+refresh s':>11} {'docs/s':>9} {'vs flat':>8}")
    flat = {r["docs"]: r["docs_s"] for r in results if r["index_type"] == "flat"}
    for r in results:
        ratio = f"{r['docs_s'] / flat[r['docs']]:.2f}x" if r["docs"] in flat else "-"
        print(f"{r['index_type']:<11} {r['docs']:>9,} {r['load_s']:>8.1f} {r['load_docs_s']:>12,.0f} "
              f"{r['with_refresh_s']:>11.1f} {r['docs_s']:>9,.0f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
