"""The ranking stage (facetrec.model.ranker, ingest.embedding.ranker_training): its features by hand, a real
LightGBM ranker that must recover a planted signal, its registry's answers, and on the real node a
ranked row served exactly as the same ranker orders numpy's top candidates; a model version without
a ranker, or whose ranker file is missing, serves retrieval order and says so."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from catalogs import bundled_schema
from facetrec.catalog.rows import RowCatalog, RowConfigError
from facetrec.metrics import NoMetrics
from facetrec.model import ranker as ranking


def _tables(sequences=()):
    # items 1..4; categories: 1 -> {a}, 2 -> {a, b}, 3 -> {b}, 4 -> {c}
    facets = {"categories": np.array([[0, 0], [1, 0], [1, 2], [2, 0], [3, 0]])}
    counts = np.array([0, 10, 5, 1, 3])
    published = np.array([np.nan, 0.0, 10.0, np.nan, 30.0])
    return ranking.ItemTables.build(["", "i1", "i2", "i3", "i4"], counts, facets, published, sequences)


def test_item_tables_hold_popularity_within_facets_freshness_and_transitions():
    tables = _tables([np.array([1, 2, 3]), np.array([1, 2]), np.array([1, 4])])
    assert tables.log_popularity[1] == pytest.approx(math.log(11))
    # a: {1, 2}: 1 is the more popular -> 1.0, 2 -> 0.5; b: {2, 3}: 2 -> 1.0 (its best over a and b)
    assert tables.facet_popularity["categories"][1:].tolist() == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert tables.freshness_days[1:3].tolist() == [30.0, 20.0] and math.isnan(tables.freshness_days[3])
    # 1 was followed by 2 twice and by 4 once; 2 by 3 once; 3 and 4 by nothing
    assert tables.followers(1, np.array([2, 3, 4])).tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert tables.followers(2, np.array([3, 1])).tolist() == pytest.approx([1.0, 0.0])
    assert tables.followers(4, np.array([1])).tolist() == [0.0]


def test_features_of_a_row_follow_the_user_history():
    tables = _tables([np.array([1, 2, 3]), np.array([1, 2])])
    user = ranking.user_context(tables, np.array([4, 1, 3]))      # oldest first: c, a, b
    names = ranking.feature_names(tables.facet_names)
    x = ranking.features(tables, user, np.array([2, 4, 3]), np.array([0.5, 0.9, 0.1], dtype=np.float32))
    row = {name: x[:, j].tolist() for j, name in enumerate(names)}
    assert row["retrieval_rank"] == [1.0, 0.0, 2.0]
    assert row["score_gap"] == pytest.approx([0.4, 0.0, 0.8])
    # each of a, b, c is held by 1 of the 3 history items
    assert row["affinity_categories"] == pytest.approx([1 / 3] * 3)
    # item 2 (a, b): b was the latest (0 items since); 4 (c): two items since; 3 (b): 0
    assert row["recency_categories"] == [0.0, 2.0, 0.0]
    # the latest item is 3, never followed; the one before (1) was followed by 2 (twice of twice)
    assert row["transition_last"] == [0.0, 0.0, 0.0]
    assert row["transition_recent"] == pytest.approx([0.5, 0.0, 0.0])
    assert row["history_length"] == [3.0] * 3
    empty = ranking.features(tables, ranking.user_context(tables, np.array([], dtype=np.int64)), np.array([1]),
                             np.array([1.0], dtype=np.float32))
    assert empty[0, names.index("recency_categories")] == 0.0 and empty[0, names.index("affinity_categories")] == 0.0


def _planted_ranker(tmp_path, n_items=60, seed=0):
    """A real LightGBM ranker trained (ingest.embedding.ranker_training.fit) on queries whose positive is
    always the most popular candidate: what it must learn is popularity, not retrieval order."""
    from ingest.embedding.ranker_training import Queries, fit

    rng = np.random.default_rng(seed)
    facets = {"categories": rng.integers(1, 5, size=(n_items + 1, 1))}
    facets["categories"][0] = 0
    counts = np.concatenate([[0], rng.integers(1, 500, n_items)])
    tables = ranking.ItemTables.build([""] + [f"i{j}" for j in range(1, n_items + 1)], counts, facets,
                                      np.concatenate([[np.nan], rng.uniform(0, 100, n_items)]))
    names = ranking.feature_names(tables.facet_names)

    def queries(n):
        feats, labels = [], []
        for _ in range(n):
            cand = rng.choice(np.arange(1, n_items + 1), 20, replace=False)
            scores = np.sort(rng.normal(size=20)).astype(np.float32)[::-1].copy()
            user = ranking.user_context(tables, rng.integers(1, n_items + 1, 5))
            feats.append(ranking.features(tables, user, cand, scores))
            labels.append((counts[cand] == counts[cand].max()).astype(np.float32))
        return Queries(np.concatenate(feats), np.concatenate(labels), np.full(n, 20), n)

    from ingest.embedding.ranker_training import RankerConfig

    booster = fit(queries(300), queries(100), names, RankerConfig(min_child_samples=20, seed=seed))
    ranking.save(tmp_path, booster, tables, {"version": "planted-lambdarank", "model_version": "m", "candidates": 20})
    return ranking.Ranker.load(tmp_path), tables, counts


def test_a_lightgbm_ranker_recovers_planted_popularity_and_round_trips(tmp_path):
    ranker, _, counts = _planted_ranker(tmp_path)
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(50):
        cand = rng.choice(np.arange(1, 61), 20, replace=False)
        ids = [f"i{j}" for j in cand]
        order, = ranker.rank_rows(["i1", "i2"], [(ids, np.linspace(1, 0, 20))])
        hits += counts[cand[order[0]]] == counts[cand].max()
    assert hits >= 40, hits          # retrieval order would put it first about 1 time in 20
    assert ranker.version == "planted-lambdarank" and ranker.candidates == 20
    # unknown items and an unknown history are features of index 0, never an error
    order, = ranker.rank_rows(["nope"], [(["i3", "unknown", "i4"], [0.3, 0.2, 0.1])])
    assert sorted(order.tolist()) == [0, 1, 2]


def test_registry_answers_applied_no_ranker_and_unavailable(tmp_path):
    _planted_ranker(tmp_path / "trained")
    root = tmp_path / "models"
    assert ranking.register(tmp_path / "trained", root / "m1")
    (root / "m2").mkdir(parents=True)
    assert not ranking.register(tmp_path / "nothing", root / "m2")
    assert ranking.register(tmp_path / "trained", root / "m3")
    (root / "m3" / "ranker.txt").unlink()         # the ranker file of a published model went missing
    registry = ranking.RankerRegistry(root, keep=4)
    assert registry.get("m1")[0] == ranking.APPLIED and registry.get("m1")[1].version == "planted-lambdarank"
    assert registry.get("m2") == (ranking.NO_RANKER, None)
    assert registry.get("m3") == (ranking.UNAVAILABLE, None)
    assert registry.get(None) == (ranking.NO_RANKER, None) and registry.get("../x") == (ranking.NO_RANKER, None)
    ranking.unregister(root / "m1")
    assert not (root / "m1" / ranking.RANKER_META).exists()
    assert registry.get("m1")[0] == ranking.APPLIED           # until it looks again...
    registry.RECHECK_S = 0.0
    assert registry.get("m1") == (ranking.NO_RANKER, None)    # ...and sees the files gone
    assert ranking.register(tmp_path / "trained", root / "m1")
    assert registry.get("m1")[0] == ranking.APPLIED           # re-registered: loaded again


def test_a_work_ranker_is_published_only_with_the_towers_it_was_trained_for(tmp_path):
    from ingest import pipeline

    work = tmp_path / "work"
    _planted_ranker(pipeline.paths(work)["ranker"])
    (work / "model").mkdir(parents=True)
    (work / "model" / "checkpoint.pt").write_bytes(b"towers one")
    ranking.save_meta(pipeline.paths(work)["ranker"], {"checkpoint_sha256": pipeline._checkpoint_digest(work)})
    assert ranking.Ranker.load(pipeline.trained_ranker(work, "m")).version == "planted-lambdarank"
    assert pipeline.trained_ranker(work, "another model") is None
    (work / "model" / "checkpoint.pt").write_bytes(b"towers two, same model version")
    assert pipeline.trained_ranker(work, "m") is None


@pytest.mark.parametrize("rank, message", [
    ({"candidates": 15}, "rank.candidates must be an integer in 20..500"),
    ({"candidates": 501}, "rank.candidates"),
    ({"candidates": True}, "rank.candidates"),
    ({"top": 100}, "rank must be a mapping {candidates: N}"),
    (100, "rank must be a mapping"),
])
def test_row_rank_config_is_validated(rank, message):
    with pytest.raises(RowConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        RowCatalog.from_dict({"rows": [{"id": "r", "size": 10, "rank": rank}]})
    row = RowCatalog.from_dict({"rows": [{"id": "r", "size": 10, "rank": {"candidates": 100},
                                          "diversity": {"max_per_category": 2, "candidates_factor": 3}}]},
                               bundled_schema("synthetic")).rows["r"]
    assert row.rank_candidates == 100 and row.candidates(10) == 100 and row.candidates(40) == 120


class _Counting(NoMetrics):
    def __init__(self):
        self.counts: dict[tuple, int] = {}

    def increment(self, name, tags=(), value=1):
        key = (name, *tags)
        self.counts[key] = self.counts.get(key, 0) + value


@pytest.fixture(scope="module")
def ranked_pair(movielens, tmp_path_factory):
    """The MovieLens pair with a real ranker registered for its model version (a copy of its models
    root, so the other modules' pair stays unranked)."""
    from conftest import MOVIELENS_MODEL

    from catalogs import movielens_ranker

    settings, catalog, items, users = movielens
    root = tmp_path_factory.mktemp("ranked") / "models"
    shutil.copytree(settings.models_root / MOVIELENS_MODEL, root / MOVIELENS_MODEL)
    trained = movielens_ranker(items, users, tmp_path_factory.mktemp("ranker"), MOVIELENS_MODEL)
    assert ranking.register(trained, root / MOVIELENS_MODEL)
    item_vectors = np.vstack([np.zeros(len(items[0]["item_embed"]))] + [np.asarray(i["item_embed"]) for i in items])
    return settings.replace(models_root=root), users, item_vectors, [""] + [i["item_id"] for i in items], trained


def _exact_top(user, item_vectors, ids, n):
    seen = {i for i in user["seen_item_ids"]}
    scores = item_vectors[1:] @ np.asarray(user["user_embed"])
    order = [j for j in np.lexsort((np.arange(len(scores)), -scores)) if ids[j + 1] not in seen][:n]
    return [ids[j + 1] for j in order], [float(scores[j]) for j in order]


def test_a_ranked_row_is_the_ranker_order_of_the_exact_candidates_and_rollbacks_serve_retrieval_order(es, ranked_pair):
    from facetrec.catalog.rows import Row
    from facetrec.serving.homepage import SearchConfig, recommend

    settings, users, item_vectors, ids, trained = ranked_pair
    row = Row(id="for_you", title="for you", size=10, rank_candidates=100)
    ranker = ranking.Ranker.load(trained)
    metrics = _Counting()
    target = SearchConfig.from_settings(settings, request_timeout_s=10.0)
    moved = 0
    for user in users[:5]:
        page = recommend(es, target, user["user_id"], [row], metrics=metrics, detailed_errors=True)
        assert page["ranker"] == {"status": "applied", "version": "ml-svd-lambdarank"}, page["ranker"]
        served = [item["id"] for item in page["rows"][0]["items"]]
        assert page["rows"][0]["ranked"] is True
        cand, dots = _exact_top(user, item_vectors, ids, 100)
        order, = ranker.rank_rows(user["seen_item_ids"][-500:], [(cand, dots)])
        assert served == [cand[i] for i in order[:10]]       # the same code, the same candidates: the same row
        moved += served != cand[:10]
        # scores stay the model's dot products, whatever the order
        assert [item["score"] for item in page["rows"][0]["items"]] == pytest.approx(
            [dots[i] for i in order[:10]], abs=1e-4)
    assert moved == 5        # the planted ranker prefers unpopular items: it always changes the row
    assert metrics.counts[("homepage.ranker", "status:applied")] == 5

    # A model version without a ranker (a rollback to a pair made before rankers) and one whose
    # ranker file is missing: retrieval order, said in the response and counted.
    bare = settings.models_root.parent / "bare"
    shutil.copytree(settings.models_root, bare)
    ranking.unregister(next(bare.iterdir()))
    broken = settings.models_root.parent / "broken"
    shutil.copytree(settings.models_root, broken)
    (next(broken.iterdir()) / "ranker.txt").unlink()
    user = users[0]
    cand, _ = _exact_top(user, item_vectors, ids, 10)
    for root, status in ((bare, "no_ranker"), (broken, "unavailable")):
        page = recommend(es, SearchConfig.from_settings(settings.replace(models_root=root), request_timeout_s=10.0),
                         user["user_id"], [row], metrics=metrics)
        assert page["ranker"] == {"status": status, "version": None}
        assert [item["id"] for item in page["rows"][0]["items"]] == cand and "ranked" not in page["rows"][0]
        assert metrics.counts[("homepage.ranker", f"status:{status}")] == 1
    # rows without `rank` never ask for a ranker
    page = recommend(es, target, user["user_id"], [Row(id="plain", title="plain", size=10)])
    assert page["ranker"] == {"status": "not_asked", "version": None}


def test_a_new_pair_without_a_ranker_and_the_rollback_to_the_ranked_one(es, ranked_pair, movielens):
    """The model version is the pair's: a publish of a model without a ranker serves retrieval order
    at once, a rollback serves the rolled-back pair's own ranker again."""
    from facetrec.catalog.rows import Row
    from facetrec.serving.homepage import SearchConfig, recommend
    from ingest.indexing.generations import Generations
    from ingest.indexing.reindex import run_reindex

    settings, users, *_ = ranked_pair
    _, catalog, items, _ = movielens
    target = SearchConfig.from_settings(settings, request_timeout_s=10.0)
    row = Row(id="for_you", title="for you", size=10, rank_candidates=100)
    user = users[0]["user_id"]
    assert recommend(es, target, user, [row])["ranker"]["status"] == "applied"
    run_reindex(es, settings, catalog, items=items, users=users[:50], model_version="ml-svd-unranked",
                generation="20260101-000002", progress=False, sample_users=3)
    page = recommend(es, target, user, [row])
    assert page["user_generation"] == "20260101-000002" and page["ranker"] == {"status": "no_ranker", "version": None}
    Generations(es, settings).rollback()
    page = recommend(es, target, user, [row])
    assert page["user_generation"] == "20260101-000001"
    assert page["ranker"] == {"status": "applied", "version": "ml-svd-lambdarank"} and page["rows"][0]["ranked"]
