"""Ingest throughput into a new generation: docs/s per index type, catalog size and bulk streams.

    python bench/ingest_bench.py --sizes 100000 1000000 --index-types flat int8_hnsw --streams 1 2
"""

from __future__ import annotations

import argparse
import sys
import time

import _checkout  # noqa: E402,F401 - this checkout's packages first (bench/_checkout.py)
import numpy as np

from facetrec.es import make_client
from facetrec.settings import Settings
from ingest.embedding.synthetic import generate_catalog, item_record
from ingest.indexing import templates
from ingest.indexing.bulk_load import bulk_load
from ingest.indexing.generations import Generations


def records(n: int, dims: int, seed: int = 0):
    catalog = generate_catalog(n, seed)
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dims)).astype(np.float32)
    for i in range(n):
        yield {**item_record(catalog, i), "item_embed": vectors[i]}


def run(sizes, index_types, dims: int, streams_options=(1,)) -> list[dict]:
    base = Settings.from_env()
    es = make_client(base, request_timeout=600)
    results = []
    for index_type in index_types:
        for n, streams in [(n, s) for n in sizes for s in streams_options]:
            settings = base.replace(item_alias="bench-item_index", user_alias="bench-user_index",
                                    index_type=index_type, vector_dims=dims)
            templates.apply(es, settings, "bench")
            gens = Generations(es, settings)
            es.indices.delete(index="bench-item_index-*", ignore_unavailable=True)
            index = gens.create("item", "20260101-000000", "bench")
            started = time.perf_counter()
            report = bulk_load(es, index, "item", records(n, dims), generation="bench", dims=dims, total=n,
                               streams=streams)
            loaded = time.perf_counter() - started
            gens.finish_loading(index)
            total = time.perf_counter() - started
            results.append({"index_type": index_type, "docs": n, "streams": streams, "load_s": loaded, "load_docs_s": n / loaded,
                            "with_refresh_s": total, "docs_s": n / total, "failed": report.failed_count})
            es.indices.delete(index=index)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--index-types", nargs="+", default=["flat", "int8_hnsw"])
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2], help="bulk requests in flight")
    args = parser.parse_args()
    results = run(args.sizes, args.index_types, args.dims, args.streams)
    print(f"\ncommand: python bench/ingest_bench.py {' '.join(sys.argv[1:])}")
    print(f"{'index_type':<11} {'docs':>9} {'streams':>7} {'bulk s':>8} {'bulk docs/s':>12} {'+refresh s':>11} "
          f"{'docs/s':>9} {'vs 1 stream':>11}")
    single = {(r["index_type"], r["docs"]): r["docs_s"] for r in results if r["streams"] == 1}
    for r in results:
        base = single.get((r["index_type"], r["docs"]))
        ratio = f"{r['docs_s'] / base:.2f}x" if base else "-"
        print(f"{r['index_type']:<11} {r['docs']:>9,} {r['streams']:>7} {r['load_s']:>8.1f} {r['load_docs_s']:>12,.0f} "
              f"{r['with_refresh_s']:>11.1f} {r['docs_s']:>9,.0f} {ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
