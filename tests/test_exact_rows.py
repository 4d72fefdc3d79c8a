"""Exact rows inside a graph generation: a row marked ``exact: true`` is scored against the
generation's flat copy of the item vectors (``item_embed_exact``), so Elasticsearch scans the row's
filtered set instead of walking the HNSW graph. Pure logic first, then end to end on the real node."""

from __future__ import annotations

import numpy as np
import pytest

from catalogs import schema_of
from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.meta import pairing_fields
from facetrec.catalog.rows import RowCatalog, RowConfigError
from facetrec.serving.homepage import SearchConfig, UserVector, fetch_user, recommend
from facetrec.serving.page_search import build_searches
from facetrec.settings import Settings
from ingest.indexing import templates

FILTER = [{"terms": {"item_format": ["ebook", "audiobook"]}}]
CATALOG = RowCatalog.from_dict({"rows": [
    {"id": "graph", "filter": FILTER},
    {"id": "exact", "exact": True, "filter": FILTER}]}, schema_of({"item_format": "keyword"}))


def _fields(searches: list[dict]) -> list[str]:
    out = []
    for body in searches[1::2]:
        query = body["query"]
        knn = query.get("knn") or query["bool"]["must"][0]["knn"]
        out.append(knn["field"])
    return out


def test_an_exact_row_asks_the_flat_copy_only_when_its_pair_has_one_and_only_in_knn_mode():
    target = SearchConfig(item_index="i", user_index="u", similarity="max_inner_product", rescore_oversample=3.0)
    rows = CATALOG.homepage_rows()
    paired = UserVector("u1", [3.0, 4.0], ["a"], "g", "g", item_vector_scale=10.0, item_exact_vectors=True)
    searches = build_searches(rows, paired, [], target, mode="knn")
    assert _fields(searches) == [ITEM_VECTOR_FIELD, EXACT_VECTOR_FIELD]
    exact_knn = searches[3]["query"]["bool"]["must"][0]["knn"]
    assert "rescore_vector" not in exact_knn   # float vectors scanned exactly: nothing to rescore
    assert "rescore_vector" in searches[1]["query"]["bool"]["must"][0]["knn"]
    # A pair made without the copy (a rollback to an older generation) is asked as it was made.
    older = UserVector("u1", [3.0, 4.0], ["a"], "g", "g", item_vector_scale=10.0)
    assert _fields(build_searches(rows, older, [], target, mode="knn")) == [ITEM_VECTOR_FIELD, ITEM_VECTOR_FIELD]
    # script_score is exact already and reads the graph field's vectors.
    script = build_searches(rows, paired, [], target, mode="script_score", script_lang="facetrec_vector")
    assert {b["query"]["script_score"]["script"]["params"]["field"] for b in script[1::2]} == {ITEM_VECTOR_FIELD}


@pytest.mark.parametrize("bad", ["yes", 1, None, [True]])
def test_exact_must_be_a_boolean(bad):
    with pytest.raises(RowConfigError, match="exact must be true or false"):
        RowCatalog.from_dict({"rows": [{"id": "r", "exact": bad}]})


def test_the_flat_copy_is_mapped_for_graph_generations_unless_turned_off():
    def properties(settings: Settings) -> dict:
        rendered = templates.render(settings, "m")[templates.template_name(settings, "item")]
        return rendered["template"]["mappings"]["properties"]

    for index_type in ("hnsw", "int8_hnsw"):
        props = properties(Settings(index_type=index_type))
        assert props[EXACT_VECTOR_FIELD]["index_options"] == {"type": "flat"}
        assert {k: v for k, v in props[EXACT_VECTOR_FIELD].items() if k != "index_options"} == \
            {k: v for k, v in props[ITEM_VECTOR_FIELD].items() if k != "index_options"}
    assert EXACT_VECTOR_FIELD not in properties(Settings(index_type="flat"))      # exact already
    assert EXACT_VECTOR_FIELD not in properties(Settings(index_type="hnsw", exact_vectors=False))
    assert Settings.from_env({"FACETREC_EXACT_VECTORS": "false"}).exact_vector_copy is False


def test_user_documents_carry_what_their_item_generation_indexes():
    assert pairing_fields({"item_vector_scale": 2.5, "exact_vectors": True}) == \
        {"item_vector_scale": 2.5, "item_exact_vectors": True}
    assert pairing_fields({"model_version": "m"}) == {}


def _vector_query_scored(profile: dict) -> int:
    """How many documents the row's vector query scored (the profile's DenseVectorQuery node)."""
    def walk(nodes):
        for node in nodes:
            if node["description"].startswith("DenseVectorQuery"):
                yield node["breakdown"]["score_count"]
            yield from walk(node.get("children", []))
    return sum(walk(profile["shards"][0]["searches"][0]["query"]))


def test_an_exact_row_in_a_graph_generation_is_the_exact_top_and_scans_its_whole_filter(es, es_settings, unique):
    """A deliberately poor graph (m 4, ef_construction 8) so an approximate walk can miss; the exact
    row still returns numpy's exact top in order, having scored every document of its filter; a
    generation made without the copy serves the same row from the graph, without an error."""
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.generations import Generations
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="hnsw", hnsw_m=4, hnsw_ef_construction=8)
    items, users, item_vectors, _ = embedding_records(n_items=3000, n_users=20, dims=64, seed=5)
    run_reindex(es, settings.replace(exact_vectors=False), CATALOG, items=items, users=users, model_version="m",
                progress=False, generation="20260101-000001", sample_users=2)
    run_reindex(es, settings, CATALOG, items=items, users=users, model_version="m", progress=False,
                generation="20260101-000002", sample_users=2)
    # The two rows share a filter: no cross-row de-duplication, so each is its own top.
    target = SearchConfig.from_settings(settings, request_timeout_s=30.0, dedupe_across_rows=False)
    rows = CATALOG.homepage_rows()
    in_filter = np.array([r["item_format"] in ("ebook", "audiobook") for r in items])
    assert in_filter.sum() > 10 * 100   # far more than num_candidates: Lucene would walk the graph
    graph_hits = exact_hits = 0
    for user in users:
        q = np.asarray(user["user_embed"], dtype=np.float64)
        seen = set(user["seen_item_ids"])
        scores = item_vectors.astype(np.float64) @ q
        order = [items[j]["item_id"] for j in np.argsort(-scores, kind="stable")
                 if in_filter[j] and items[j]["item_id"] not in seen][:10]
        page = recommend(es, target, user["user_id"], rows, mode="knn")
        graph, exact = (row["items"] for row in page["rows"])
        assert [i["id"] for i in exact] == order, user["user_id"]
        exact_hits += 10
        graph_hits += len({i["id"] for i in graph} & set(order))

        served = fetch_user(es, settings.user_alias, user["user_id"], 5.0)
        assert served.item_exact_vectors
        body = build_searches([rows[1]], served, [], target, mode="knn")[1]
        profile = es.search(index=settings.item_alias, body={**body, "profile": True})["profile"]
        assert _vector_query_scored(profile) == int(in_filter.sum()) - len(seen & {
            items[j]["item_id"] for j in np.flatnonzero(in_filter)})
    print(f"graph row id recall with m 4 / ef_construction 8: {graph_hits / exact_hits:.3f}")

    Generations(es, settings).rollback()   # back to the pair made without the copy
    user = fetch_user(es, settings.user_alias, users[0]["user_id"], 5.0)
    assert user.item_exact_vectors is False and user.generation == "20260101-000001"
    page = recommend(es, target, users[0]["user_id"], rows, mode="knn")
    assert all(row["items"] and "error" not in row for row in page["rows"])
