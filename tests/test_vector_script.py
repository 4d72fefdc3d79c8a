"""elasticsearch_local's VectorScriptPlugin: script_score in the `facetrec_vector` language."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from elasticsearch import helpers

from facetrec.catalog.rows import Row
from facetrec.es import script_lang, script_languages
from facetrec.serving.row_queries import build_row_search
from facetrec.serving.scoring import script_score_to_dot

DIMS = 64
N = 400
COLORS = ("red", "green", "blue")
EVIL = "x'); System.exit(0); //"
# float32 dot products, indexed exactly (flat), indexed quantized (int8_hnsw keeps the raw floats too),
# and not indexed at all (binary doc values).
FIELDS = {"exact": {"similarity": "max_inner_product", "index_options": {"type": "flat"}},
          "int8": {"similarity": "max_inner_product", "index_options": {"type": "int8_hnsw"}},
          "unindexed": {"index": False}}


@pytest.fixture(scope="module")
def vectors(es):
    if "facetrec_vector" not in script_languages(es):
        pytest.skip("this cluster does not have the facetrec_vector plugin (a full distribution uses painless)")
    index = f"t-vs-{uuid.uuid4().hex[:10]}"
    rng = np.random.default_rng(5)
    data = rng.normal(size=(N, DIMS)).astype(np.float32)
    colors = [COLORS[i % 3] for i in range(N)]
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0}, mappings={"properties": {
        **{name: {"type": "dense_vector", "dims": DIMS, **options}
           for name, options in FIELDS.items()},
        "color": {"type": "keyword"}, "n": {"type": "integer"}}})
    for part in (range(0, N // 2), range(N // 2, N)):  # two segments at least
        ok, errors = helpers.bulk(es, ({"_index": index, "_id": f"doc-{i}", "color": colors[i], "n": i,
                                        **{name: data[i].tolist() for name in FIELDS}} for i in part),
                                  refresh=True, raise_on_error=False)
        assert not errors
    yield index, data, colors
    es.indices.delete(index=index)


def _script(field: str, query, shift: float = 1000.0) -> dict:
    return {"lang": "facetrec_vector", "source": "dot_product",
            "params": {"field": field, "query_vector": [float(x) for x in query], "shift": shift}}


def test_the_local_node_is_detected_as_having_it(es, vectors):
    assert script_lang(es) == ("painless" if "painless" in script_languages(es) else "facetrec_vector")
    assert script_lang(es, "painless") == "painless"  # a setting other than auto wins


@pytest.mark.parametrize("field", FIELDS)
def test_row_search_ranks_the_filtered_set_by_exact_dot_product(es, vectors, field):
    index, data, colors = vectors
    query = np.random.default_rng(9).normal(size=DIMS).astype(np.float32)
    excluded = [f"doc-{i}" for i in range(0, 60, 3)]
    row = Row(id="red", title="red", filter=({"term": {"color": "red"}},), must_not=({"term": {"color": EVIL}},))
    members = [i for i, c in enumerate(colors) if c == "red" and f"doc-{i}" not in excluded]
    body = build_row_search(row, user_vector=query.tolist(), user_filters=[], exclude_ids=excluded, k=len(members),
                            mode="script_score", num_candidates_factor=10, vector_field=field,
                            script_lang="facetrec_vector")
    body["_source"] = False
    hits = es.search(index=index, body=body)["hits"]["hits"]

    dots = data[members].astype(np.float64) @ query.astype(np.float64)
    order = np.argsort(-dots, kind="stable")
    assert [h["_id"] for h in hits] == [f"doc-{members[j]}" for j in order]
    # The service's contract: score = dot + 1000 (a float32 _score near 1000 keeps ~6e-5).
    np.testing.assert_allclose([script_score_to_dot(h["_score"]) for h in hits], dots[order], atol=1e-4)


@pytest.mark.parametrize("field", FIELDS)
def test_score_is_the_raw_float32_dot_product(es, vectors, field):
    index, data, _ = vectors
    query = np.random.default_rng(3).normal(size=DIMS).astype(np.float32)
    hits = es.search(index=index, size=N, source=False, query={"script_score": {
        "query": {"range": {"n": {"lt": 50}}}, "script": _script(field, query, shift=0.0)}})["hits"]["hits"]
    got = {h["_id"]: h["_score"] for h in hits}
    assert len(got) == 50
    expected = {f"doc-{i}": float(data[i].astype(np.float64) @ query.astype(np.float64)) for i in range(50)}
    assert sum(v > 0 for v in expected.values()) > 10 and sum(v < 0 for v in expected.values()) > 10
    for doc_id, score in got.items():
        # the raw dot product up to float32 summation error, clamped at 0 where it is negative with
        # shift 0 (Elasticsearch rejects negative scores; the service shifts by 1000 instead)
        assert score == pytest.approx(max(expected[doc_id], 0.0), abs=2e-5)


def test_a_bad_parameter_fails_its_search_alone_with_the_reason(es, vectors):
    index, *_ = vectors
    good = [0.1] * DIMS
    cases = [
        ({"field": "exact", "query_vector": good}, None),
        ({"field": "exact", "query_vector": [0.1, 0.2, 0.3]}, "params.query_vector has 3 dimensions but field [exact] has 64"),
        ({"field": "exact"}, "params.query_vector is missing"),
        ({"field": "exact", "query_vector": "0.1, 0.2"}, "params.query_vector must be an array of numbers"),
        ({"field": "exact", "query_vector": [0.1] * (DIMS - 1) + ["x"]}, "params.query_vector[63] must be a finite number"),
        ({"field": "nope", "query_vector": good}, "unknown field [nope]"),
        ({"field": "color", "query_vector": good}, "field [color] is of type [keyword], not dense_vector"),
        ({"field": "exact", "query_vector": good, "shift": "x"}, "params.shift must be a finite number"),
        ({"field": "exact", "query_vector": good, "vector": good}, "unknown parameter [vector]"),
    ]
    searches = []
    for params, _ in cases:
        searches += [{"index": index}, {"size": 3, "query": {"script_score": {
            "query": {"match_all": {}}, "script": {"lang": "facetrec_vector", "source": "dot_product", "params": params}}}}]
    searches += [{"index": index}, {"size": 3, "query": {"script_score": {
        "query": {"match_all": {}}, "script": {"lang": "facetrec_vector", "source": "dotProduct(params.v)"}}}}]
    responses = es.msearch(searches=searches)["responses"]

    assert len(responses) == len(cases) + 1
    assert "error" not in responses[0] and len(responses[0]["hits"]["hits"]) == 3
    for (params, reason), response in zip(cases[1:], responses[1:]):
        assert response["status"] == 400, response
        assert reason in response["error"]["root_cause"][0]["reason"], response["error"]
    unknown_script = responses[-1]["error"]
    assert unknown_script["root_cause"][0]["type"] == "general_script_exception"
    assert "unknown facetrec_vector script" in str(unknown_script)
