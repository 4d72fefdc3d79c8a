"""The inner-product -> nearest-neighbour reduction (facetrec.serving.mips): pure logic, then end to end
on the real node with an HNSW generation."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facetrec.catalog.rows import RowCatalog
from facetrec.serving import mips
from facetrec.serving.homepage import SearchConfig, UserVector, recommend
from facetrec.serving.page_search import build_searches
from facetrec.settings import Settings
from ingest.indexing.records import max_vector_norm, parquet_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vectors(seed: int = 0, n: int = 500, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, dims)) * rng.uniform(0.1, 3.0, size=(n, 1))   # very unequal norms
    return items, rng.normal(size=(20, dims))


def test_the_reduction_keeps_the_inner_product_ranking_and_recovers_raw_scores():
    items, queries = _vectors()
    scale = mips.max_norm(items)
    stored = np.array([mips.item_vector(v, scale) for v in items])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(stored, mips.item_vectors(items, scale), atol=1e-6)
    for q in queries:
        raw = items @ q
        knn = np.asarray(mips.knn_query(q))
        assert knn.shape == (17,) and knn[-1] == 0.0 and abs(np.linalg.norm(knn) - 1.0) < 1e-12
        cosine = stored @ knn
        assert list(np.argsort(-cosine, kind="stable")) == list(np.argsort(-raw, kind="stable"))
        # Elasticsearch's dot_product _score is (1 + cosine) / 2; the service turns it back into x . q.
        recovered = [mips.knn_score_to_dot((1 + c) / 2, float(np.linalg.norm(q)), scale) for c in cosine]
        np.testing.assert_allclose(recovered, raw, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stored @ np.asarray(mips.script_query(q, scale)), raw, rtol=1e-9, atol=1e-9)


def test_the_reduction_applies_to_graph_indices_of_the_raw_inner_product_only():
    base = Settings()
    assert mips.applies(base.replace(index_type="hnsw")) and mips.applies(base.replace(index_type="int8_hnsw"))
    assert not mips.applies(base.replace(index_type="flat"))
    assert not mips.applies(base.replace(index_type="hnsw", similarity="dot_product"))
    assert not mips.applies(base.replace(index_type="hnsw", mips_reduction=False))
    assert Settings.from_env({"FACETREC_MIPS_REDUCTION": "false"}).mips_reduction is False


def test_the_item_vector_scale_is_the_largest_usable_norm_of_any_re_readable_source(tmp_path):
    records = [{"item_embed": [3.0, 4.0]}, {"item_embed": [float("nan"), 1.0]}, {"item_embed": None},
               {"item_embed": [1.0, 0.0]}, {"other": 1}]
    assert max_vector_norm(records, "item_embed") == 5.0
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "item_embed": [[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]]}), path)
    source = parquet_records(path, batch_size=2)
    assert max_vector_norm(source, "item_embed") == 10.0
    assert [r["item_id"] for r in source] == ["a", "b", "c"]   # still readable after the scan
    with pytest.raises(TypeError, match="twice"):
        max_vector_norm(iter(records), "item_embed")


def test_the_page_asks_a_reduced_generation_with_reduced_vectors_and_a_raw_one_as_before():
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    rows = catalog.homepage_rows()[:2]
    target = SearchConfig(item_index="i", user_index="u", similarity="max_inner_product")
    vector = [3.0, 4.0]
    reduced = UserVector("u1", vector, [], "g", "g", item_vector_scale=10.0)
    knn = build_searches(rows, reduced, [], target, mode="knn")[1]["query"]["knn"]["query_vector"]
    assert knn == pytest.approx([0.6, 0.8, 0.0])
    script = build_searches(rows, reduced, [], target, mode="script_score", script_lang="facetrec_vector")[1]
    assert script["query"]["script_score"]["script"]["params"]["query_vector"] == pytest.approx([30.0, 40.0, 0.0])
    raw = UserVector("u1", vector, [], "g", "g")
    assert build_searches(rows, raw, [], target, mode="knn")[1]["query"]["knn"]["query_vector"] == [3.0, 4.0]


@pytest.mark.parametrize("index_type", ["hnsw", "int8_hnsw"])
def test_a_graph_generation_is_stored_reduced_and_served_with_raw_scores_and_exact_script_rows(
        es, es_settings, unique, index_type):
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type=index_type, script_lang="facetrec_vector")
    items, users, item_vectors, user_vectors = embedding_records(n_items=2000, n_users=30, dims=64, seed=21)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    result = run_reindex(es, settings, catalog, items=items, users=users, model_version="m", progress=False,
                         generation="20260101-000001", sample_users=3,
                         recall_sample=(user_vectors[:10], [r["item_id"] for r in items], item_vectors))
    assert result["status"] == "swapped" and result["recall"] >= 0.9

    item_index = f"{settings.item_alias}-20260101-000001"
    mapping = es.indices.get_mapping(index=item_index)[item_index]["mappings"]
    field = mapping["properties"]["item_embed"]
    assert (field["dims"], field["similarity"]) == (65, "dot_product")
    scale = mapping["_meta"]["item_vector_scale"]
    assert scale == pytest.approx(float(np.linalg.norm(item_vectors.astype(np.float64), axis=1).max()))
    user_doc = es.get(index=settings.user_alias, id=users[0]["user_id"],
                      source_includes=["user_embed", "item_vector_scale"])["_source"]
    assert user_doc["item_vector_scale"] == scale and len(user_doc["user_embed"]) == 64

    by_id = {r["item_id"]: i for i, r in enumerate(items)}
    target = SearchConfig.from_settings(settings, request_timeout_s=30.0)
    rows = catalog.homepage_rows()
    for u in range(5):
        q = np.asarray(users[u]["user_embed"], dtype=np.float64)
        for mode in ("knn", "script_score"):
            page = recommend(es, target, users[u]["user_id"], rows, mode=mode)
            for row in page["rows"]:
                assert "error" not in row, row
                assert row["items"], (mode, row["id"])
                # Scores are the raw inner products of the model's vectors (int8 knn hits are rescored
                # with the float vectors: without that, about 1-4% off here).
                for item in row["items"]:
                    raw = float(item_vectors[by_id[item["id"]]].astype(np.float64) @ q)
                    assert item["score"] == pytest.approx(raw, rel=1e-4, abs=1e-3), (mode, row["id"])
        # script_score over the reduced vectors is still the exact top of the raw inner product.
        page = recommend(es, target, users[u]["user_id"], [rows[0]], mode="script_score")
        seen = set(users[u]["seen_item_ids"])
        exact = [items[j]["item_id"] for j in np.argsort(-(item_vectors.astype(np.float64) @ q))
                 if items[j]["item_id"] not in seen]
        assert [i["id"] for i in page["rows"][0]["items"]] == exact[:rows[0].size]


def test_a_users_only_refresh_pairs_with_the_scale_of_the_live_items(es, es_settings, unique):
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="hnsw")
    items, users, _, _ = embedding_records(n_items=500, n_users=20, dims=64, seed=4)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version="m", progress=False,
                generation="20260101-000001", sample_users=2)
    item_index = f"{settings.item_alias}-20260101-000001"
    scale = es.indices.get_mapping(index=item_index)[item_index]["mappings"]["_meta"]["item_vector_scale"]
    refreshed = [{**u, "user_embed": [x * 2 for x in u["user_embed"]]} for u in users]
    run_reindex(es, settings, catalog, items=None, users=refreshed, model_version="m", progress=False,
                generation="20260101-000002", sample_users=2)
    doc = es.get(index=settings.user_alias, id=users[0]["user_id"])["_source"]
    assert doc["generation"] == "20260101-000002" and doc["item_vector_scale"] == scale


def test_a_row_may_ask_for_more_knn_candidates_than_the_setting():
    from facetrec.catalog.rows import RowConfigError

    catalog = RowCatalog.from_dict({"rows": [{"id": "wide", "title": "w", "num_candidates_factor": 30},
                                             {"id": "plain", "title": "p"}]})
    target = SearchConfig(item_index="i", user_index="u", similarity="max_inner_product", num_candidates_factor=10,
                    dedupe_across_rows=False)
    user = UserVector("u1", [1.0, 0.0], [], "g", "g")
    searches = build_searches(catalog.homepage_rows(), user, [], target, mode="knn")
    assert [searches[i]["query"]["knn"]["num_candidates"] for i in (1, 3)] == [300, 100]
    for bad in (0, 1001, "30", True):
        with pytest.raises(RowConfigError, match="num_candidates_factor"):
            RowCatalog.from_dict({"rows": [{"id": "r", "num_candidates_factor": bad}]})


def test_raw_and_reduced_pairs_roll_back_and_a_read_across_their_swap_is_read_again(es, es_settings, unique):
    from facetrec.serving.homepage import _mixed, fetch_user
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.generations import Generations
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="hnsw", script_lang="facetrec_vector")
    items, users, item_vectors, _ = embedding_records(n_items=800, n_users=10, dims=64, seed=8)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    rows = catalog.homepage_rows()[:2]
    by_id = {r["item_id"]: i for i, r in enumerate(items)}
    run_reindex(es, settings.replace(mips_reduction=False), catalog, items=items, users=users, model_version="m",
                generation="20260101-000001", progress=False, sample_users=2)
    run_reindex(es, settings, catalog, items=items, users=users, model_version="m",
                generation="20260101-000002", progress=False, sample_users=2)
    target = SearchConfig.from_settings(settings, request_timeout_s=30.0)
    user_id = users[0]["user_id"]
    q = np.asarray(users[0]["user_embed"], dtype=np.float64)

    def served_scores_are_raw(generation: str) -> None:
        for mode in ("knn", "script_score"):
            page = recommend(es, target, user_id, rows, mode=mode)
            assert page["generation"] == generation
            for row in page["rows"]:
                assert row["items"] and "error" not in row
                for item in row["items"]:
                    assert item["score"] == pytest.approx(float(item_vectors[by_id[item["id"]]] @ q), rel=1e-4)

    served_scores_are_raw("20260101-000002")
    reduced_user = fetch_user(es, settings.user_alias, user_id, 5.0)
    assert reduced_user.item_vector_scale is not None
    Generations(es, settings).rollback()
    raw_index = f"{settings.item_alias}-20260101-000001"
    assert es.indices.get_mapping(index=raw_index)[raw_index]["mappings"]["properties"]["item_embed"]["dims"] == 64
    served_scores_are_raw("20260101-000001")
    # The user vector read before the rollback (reduced pair), the rows asked after it (raw pair):
    # the rows are refused for their vector's length, and the page sees a mixed read to do again.
    for mode in ("knn", "script_score"):
        searches = build_searches(rows, reduced_user, [], target, mode=mode, script_lang="facetrec_vector")
        responses = es.msearch(searches=searches)["responses"]
        assert all("error" in r for r in responses)
        assert "did not fit" in (_mixed(reduced_user, responses) or "")


def test_the_item_vector_scale_of_a_spark_dataframe_skips_nan_and_infinite_vectors(spark):
    df = spark.createDataFrame([("a", [3.0, 4.0]), ("b", [float("nan"), 1.0]), ("c", [float("inf"), 0.0]),
                                ("d", None), ("e", [0.0, 1.0])], "item_id string, item_embed array<double>")
    assert max_vector_norm(df, "item_embed") == 5.0


def test_an_item_longer_than_the_generation_scale_is_an_invalid_document_not_a_wrong_vector():
    from facetrec.items.documents import InvalidDocument, item_document

    _, doc = item_document({"item_id": "a", "item_embed": [3.0, 4.0]}, "g", 2, False, item_vector_scale=5.0)
    assert doc["item_embed"] == pytest.approx([0.6, 0.8, 0.0])
    with pytest.raises(InvalidDocument, match="exceeds the generation's item vector scale 4.9"):
        item_document({"item_id": "a", "item_embed": [3.0, 4.0]}, "g", 2, False, item_vector_scale=4.9)
