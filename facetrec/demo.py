"""The README's main job: start the local node (unless ES_URL is set) and show the system working."""

from __future__ import annotations

import sys

import numpy as np
from elasticsearch import helpers

from facetrec import es_local
from facetrec.es import make_client
from facetrec.scoring import knn_score_to_dot
from facetrec.settings import Settings


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


def smoke(settings: Settings) -> None:
    es = make_client(settings, request_timeout=30)
    index = "facetrec-smoke"
    es.indices.delete(index=index, ignore_unavailable=True)
    es.indices.create(index=index, settings={"number_of_replicas": 0}, mappings={"properties": {
        "item_embed": {"type": "dense_vector", "dims": 8, "similarity": "max_inner_product",
                       "index_options": {"type": "flat"}},
        "item_format": {"type": "keyword"}, "title": {"type": "text"}}})
    rng = np.random.default_rng(0)
    formats = ["ebook", "audiobook", "podcast"]
    helpers.bulk(es, ({"_index": index, "_id": str(i), "item_embed": rng.normal(size=8).tolist(),
                       "item_format": formats[i % 3], "title": f"item {i}"} for i in range(30)), refresh=True)
    hits = es.search(index=index, knn={"field": "item_embed", "query_vector": rng.normal(size=8).tolist(), "k": 5,
                                       "num_candidates": 30, "filter": {"term": {"item_format": "audiobook"}}},
                     source=["title", "item_format"])["hits"]["hits"]
    print("top audiobooks for a random user vector:")
    for hit in hits:
        print(f"  {hit['_id']:>3}  {hit['_source']['title']:<10} {hit['_source']['item_format']:<10} "
              f"dot={knn_score_to_dot(hit['_score'], 'max_inner_product'):+.3f}")


def main() -> int:
    settings = ensure_cluster(Settings.from_env())
    smoke(settings)
    print("facetrec: the local node keeps running; stop it with `make es-stop`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
