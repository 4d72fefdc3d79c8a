"""Multi-interest users on the real node, with a really trained model of K = 2 interests: the nightly
export stores every user's K vectors (the current one as ``user_embed``), the item generation records
each row's centroid, a page searches each row with the interest closest to its items and makes no more
searches than rows, the events path recomputes all K vectors as the exported encoder does (within
1e-5), and a rollback to a one-vector pair serves and takes events as before."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from app import create_app
from facetrec.catalog.meta import read_meta
from facetrec.catalog.rows import RowCatalog
from facetrec.es import alias_index
from facetrec.model.user_encoder import ExportedUserEncoder
from facetrec.serving.homepage import SearchConfig, fetch_user
from facetrec.serving.page_search import build_page_search
from facetrec.settings import CATALOGS_DIR
from ingest import pipeline
from ingest.indexing.generations import Generations

pytestmark = pytest.mark.slow
ROWS = CATALOGS_DIR / "synthetic" / "rows.yaml"
MODEL = {"dim": 16, "hidden": 32, "layers": 1, "max_len": 20, "dropout": 0.1}


@pytest.fixture(scope="module")
def two_pairs(es, es_settings, tmp_path_factory):
    """The same synthetic catalog published twice: a one-vector model (generation 1), then a model of
    two interests (generation 2, live)."""
    root = tmp_path_factory.mktemp("interests")
    prefix = f"mi-{uuid.uuid4().hex[:8]}"
    settings = es_settings.replace(item_alias=f"{prefix}-item_index", user_alias=f"{prefix}-user_index",
                                   index_type="hnsw", partition_min_docs=20, vector_dims=MODEL["dim"],
                                   models_root=root / "models", rows_config=ROWS, es_request_timeout_s=5.0)
    works = {}
    for generation, interests in (("20260501-000001", 1), ("20260501-000002", 2)):
        work = root / f"k{interests}"
        pipeline.step_prepare_data("synthetic", work, n_items=400, n_users=160, history=20, seed=3)
        pipeline.step_etl(work)
        pipeline.step_train(work, {**MODEL, "interests": interests}, {"epochs": 2, "patience": 2, "seed": 1},
                            progress=False)
        pipeline.step_embed(work, progress=False)
        pipeline.step_publish(work, settings, ROWS, generation=generation, progress=False)
        works[interests] = work
    yield settings, works
    es.indices.delete(index=f"{prefix}*", ignore_unavailable=True)
    es.indices.delete(index=f"{settings.user_alias}_events", ignore_unavailable=True)


def test_users_carry_k_interests_rows_their_centroids_and_each_row_uses_the_closest(es, two_pairs):
    settings, works = two_pairs
    user = fetch_user(es, settings.user_alias, "u3", 5.0)
    assert user.interests is not None and len(user.interests) == 2 and list(user.interests[0]) == user.vector
    item_index = alias_index(es, settings.item_alias)
    recorded = read_meta(es, item_index).row_stats["rows"]
    catalog = RowCatalog.load(ROWS)
    assert all(len(recorded[row.id]["centroid"]) == MODEL["dim"] for row in catalog.homepage_rows())
    from facetrec.catalog.counts import StatsCache
    target = SearchConfig.from_settings(settings, request_timeout_s=5.0,
                                        stats=StatsCache(list(catalog.rows.values()), catalog.user_filters))
    chosen_any = 0
    for n in range(40):
        user = fetch_user(es, settings.user_alias, f"u{n}", 5.0)
        stats = target.stats.get(es, settings.item_alias, user.pairs_with, 5.0)
        page = build_page_search(catalog.homepage_rows(), user, [], target, stats=stats)
        assert len(page.lines) // 2 <= len(catalog.homepage_rows())
        for searched in page.rows:
            centroid = np.array(stats.centroid(searched.row))
            scores = [float(np.dot(v, centroid)) for v in user.interests]
            assert scores[searched.interest] == max(scores)
            chosen_any += searched.interest != 0
    assert chosen_any, "no row of 40 users leaned to another interest than the current one"


def test_the_page_is_served_and_events_recompute_every_interest_as_the_encoder_does(es, two_pairs):
    settings, works = two_pairs
    client = create_app(settings).test_client()
    page = client.get("/v1/users/u5/homepage")
    assert page.status_code == 200 and all("error" not in row and row["items"] for row in page.get_json()["rows"])
    answer = client.post("/v1/users/u5/events", json={"batch_id": "mi-1", "events": [
        {"item_id": "i7", "ts": "2026-05-01T10:00:00Z"}, {"item_id": "i9", "ts": "2026-05-01T10:01:00Z"}]})
    assert answer.status_code == 200, answer.get_json()
    doc = es.get(index=settings.user_alias, id="u5", source_exclude_vectors=False)["_source"]
    model_version = read_meta(es, alias_index(es, settings.user_alias)).model_version
    encoder = ExportedUserEncoder(settings.models_root / model_version)
    expected = encoder.user_interests([doc["seen_item_ids"]], np.zeros((1, len(encoder.feature_names)), np.int64))[0]
    assert expected.shape == (2, MODEL["dim"])
    np.testing.assert_allclose(np.array(doc["user_interests"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.array(doc["user_embed"]), expected[0], atol=1e-5)


def test_a_rollback_to_a_one_vector_pair_serves_and_takes_events_as_before(es, two_pairs):
    settings, _ = two_pairs
    gens = Generations(es, settings)
    moved = gens.rollback()
    assert moved["user"].endswith("20260501-000001")
    try:
        client = create_app(settings).test_client()
        user = fetch_user(es, settings.user_alias, "u6", 5.0)
        assert user.interests is None
        page = client.get("/v1/users/u6/homepage")
        assert page.status_code == 200 and all(row["items"] for row in page.get_json()["rows"])
        answer = client.post("/v1/users/u6/events", json={"batch_id": "mi-2", "events": [
            {"item_id": "i11", "ts": "2026-05-01T11:00:00Z"}]})
        assert answer.status_code == 200
        doc = es.get(index=settings.user_alias, id="u6", source_exclude_vectors=False)["_source"]
        assert "user_interests" not in doc and len(doc["user_embed"]) == MODEL["dim"]
    finally:
        gens.swap({"item": gens.index_name("item", "20260501-000002"), "user": gens.index_name("user", "20260501-000002")})
