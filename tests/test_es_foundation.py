"""The real Elasticsearch node does what every later feature relies on."""

from __future__ import annotations

import numpy as np
import pytest
from elasticsearch import helpers

from facetrec.serving.scoring import knn_score_to_dot

DIMS = 64
COLORS = ("red", "green", "blue")


def test_client_info_and_ping(es):
    info = es.info()
    assert info["version"]["number"].startswith("9.")
    assert info["tagline"] == "You Know, for Search"
    assert info["cluster_uuid"] and info["cluster_name"]
    assert es.ping() is True


def test_composable_template_applies_to_new_index(es, unique):
    es.cluster.put_component_template(name=f"{unique}-vectors", template={
        "mappings": {"properties": {"embed": {"type": "dense_vector", "dims": DIMS, "index": True,
                                              "similarity": "max_inner_product"}}}})
    es.indices.put_index_template(name=f"{unique}-tpl", index_patterns=[f"{unique}-data-*"],
                                  composed_of=[f"{unique}-vectors"], priority=500,
                                  template={"settings": {"number_of_replicas": 0},
                                            "mappings": {"properties": {"color": {"type": "keyword"}}}})
    try:
        es.indices.create(index=f"{unique}-data-1")
        mapping = es.indices.get_mapping(index=f"{unique}-data-1")[f"{unique}-data-1"]["mappings"]["properties"]
        assert mapping["embed"]["type"] == "dense_vector" and mapping["embed"]["dims"] == DIMS
        assert mapping["color"]["type"] == "keyword"
        settings = es.indices.get_settings(index=f"{unique}-data-1")[f"{unique}-data-1"]["settings"]["index"]
        assert settings["number_of_replicas"] == "0"
    finally:
        es.indices.delete(index=f"{unique}-data-1", ignore_unavailable=True)
        es.indices.delete_index_template(name=f"{unique}-tpl")
        es.cluster.delete_component_template(name=f"{unique}-vectors")


def _vectors(n: int, unit: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    if unit:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@pytest.mark.parametrize("similarity,index_type", [
    ("dot_product", "flat"), ("dot_product", "hnsw"),
    ("max_inner_product", "flat"), ("max_inner_product", "hnsw"),
])
def test_filtered_knn_msearch_ranks_by_exact_dot_product(es, unique, similarity, index_type):
    index = f"{unique}-items"
    unit = similarity == "dot_product"
    vectors = _vectors(300, unit=unit, seed=7)
    colors = [COLORS[i % 3] for i in range(len(vectors))]
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0}, mappings={
        "properties": {"embed": {"type": "dense_vector", "dims": DIMS, "index": True, "similarity": similarity,
                                 "index_options": {"type": index_type}},
                       "color": {"type": "keyword"}}})
    ok, errors = helpers.bulk(es, ({"_index": index, "_id": f"doc-{i}", "embed": v.tolist(), "color": c}
                                   for i, (v, c) in enumerate(zip(vectors, colors))),
                              refresh="wait_for", raise_on_error=False)
    assert ok == len(vectors) and not errors

    # 9.x leaves vectors out of _source unless asked for (by name, or with exclude_vectors off).
    assert "embed" not in es.get(index=index, id="doc-5")["_source"]
    stored = es.get(index=index, id="doc-5", source_exclude_vectors=False)["_source"]["embed"]
    np.testing.assert_allclose(np.array(stored, dtype=np.float32), vectors[5], rtol=0, atol=0)

    query = _vectors(1, unit=unit, seed=99)[0]
    searches = []
    for color in ("red", "blue"):
        searches += [{"index": index}, {"knn": {"field": "embed", "query_vector": query.tolist(), "k": 10,
                                                "num_candidates": 150, "filter": {"term": {"color": color}}},
                                        "size": 10, "_source": ["color"]}]
    responses = es.msearch(searches=searches)["responses"]
    assert len(responses) == 2
    for color, response in zip(("red", "blue"), responses):
        hits = response["hits"]["hits"]
        assert [h["_source"]["color"] for h in hits] == [color] * 10
        members = [i for i, c in enumerate(colors) if c == color]
        dots = vectors[members] @ query
        expected = [f"doc-{members[j]}" for j in np.argsort(-dots, kind="stable")[:10]]
        assert [h["_id"] for h in hits] == expected
        got = [knn_score_to_dot(h["_score"], similarity) for h in hits]
        np.testing.assert_allclose(got, np.sort(dots)[::-1][:10], atol=2e-4)


def test_alias_moves_atomically_between_indices(es, unique):
    old, new, alias = f"{unique}-gen-1", f"{unique}-gen-2", f"{unique}-live"
    for name in (old, new):
        es.indices.create(index=name, settings={"number_of_replicas": 0})
    es.indices.put_alias(index=old, name=alias)
    es.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                       {"add": {"index": new, "alias": alias}}])
    assert list(es.indices.get_alias(name=alias)) == [new]
