"""Diverse rows: crowding, MMR and backfill as pure logic (facetrec/serving/diversity.py)."""

from __future__ import annotations

import copy

import pytest

from facetrec.catalog.diversity_policy import DiversityPolicy
from facetrec.serving.diversity import apply, category_coverage, intra_list_diversity

CATEGORY = "categories"   # the catalog schema's category facet (items.categories)


def item(i: int, score: float, *cats: str) -> dict:
    return {"id": f"i{i}", "score": score, "categories": list(cats)}


CANDIDATES = [item(0, 9.0, "thriller"), item(1, 8.5, "thriller"), item(2, 8.0, "thriller", "crime"),
              item(3, 7.0, "romance"), item(4, 6.0, "thriller"), item(5, 5.0, "history")]


def test_crowding_caps_each_category_and_keeps_relevance_order_otherwise():
    items, info = apply(DiversityPolicy(max_per_category=2), CANDIDATES, 4, category_field=CATEGORY)
    assert [i["id"] for i in items] == ["i0", "i1", "i3", "i5"]
    assert info == {"policy": "max_per_category", "candidates": 6, "reranked": 2, "backfilled": 0}


def test_a_row_the_cap_leaves_short_is_backfilled_and_says_so():
    items, info = apply(DiversityPolicy(max_per_category=1), CANDIDATES[:5], 4, category_field=CATEGORY)
    assert [i["id"] for i in items] == ["i0", "i3", "i1", "i2"]
    assert info["backfilled"] == 2 and len(items) == 4


def test_lambda_one_is_relevance_order_and_fewer_candidates_than_the_size_return_them_all():
    items, info = apply(DiversityPolicy(mmr_lambda=1.0), CANDIDATES, 10, category_field=CATEGORY)
    assert [i["id"] for i in items] == [c["id"] for c in CANDIDATES] and info["reranked"] == 0


def test_mmr_pushes_a_near_duplicate_down_by_vector_and_by_category():
    vectors = {"i0": [1.0, 0.0], "i1": [0.99, 0.05], "i2": [0.0, 1.0], "i3": [0.7, 0.7],
               "i4": [1.0, 0.01], "i5": [-1.0, 0.0]}
    by_vector, _ = apply(DiversityPolicy(mmr_lambda=0.5), CANDIDATES, 3, vectors, category_field=CATEGORY)
    assert [i["id"] for i in by_vector][:2] == ["i0", "i2"], "i1 is i0's near-duplicate"
    by_category, info = apply(DiversityPolicy(mmr_lambda=0.5), CANDIDATES, 3, category_field=CATEGORY)
    assert [i["id"] for i in by_category][:2] == ["i0", "i3"] and info["policy"] == "mmr"


def test_mmr_and_the_cap_compose_deterministically_without_touching_the_input():
    before = copy.deepcopy(CANDIDATES)
    runs = {tuple(i["id"] for i in apply(DiversityPolicy(2, 0.7), CANDIDATES, 4, category_field=CATEGORY)[0]) for _ in range(3)}
    assert len(runs) == 1 and CANDIDATES == before
    (ids,) = runs
    assert sum(1 for i in ids if "thriller" in next(c for c in CANDIDATES if c["id"] == i)["categories"]) <= 2


@pytest.mark.parametrize("raw, field", [
    ({}, "diversity"), ({"max_per_category": 0}, "max_per_category"), ({"max_per_category": True}, "max_per_category"),
    ({"mmr_lambda": 1.5}, "mmr_lambda"), ({"mmr_lambda": 0.5, "candidates_factor": 11}, "candidates_factor"),
    ({"mmr_lambda": 0.5, "colour": 1}, "colour"), ([], "diversity"),
])
def test_bad_policies_name_the_field(raw, field):
    with pytest.raises(ValueError, match=field):
        DiversityPolicy.parse(raw)


def test_list_metrics():
    assert intra_list_diversity([[1, 0], [0, 1]]) == pytest.approx(1.0)
    assert intra_list_diversity([[1, 0], [2, 0]]) == pytest.approx(0.0)
    assert category_coverage(CANDIDATES[:3], CATEGORY) == 2


def test_a_diverse_row_is_served_as_the_policy_over_the_exact_candidates(es, published):
    """Real node (flat: exact candidates): the served row equals facetrec.serving.diversity.apply over the
    numpy top size x candidates_factor with the stored vectors, and says what ran."""
    import numpy as np

    from app import create_app

    settings, catalog, items, users, item_vectors, user_vectors = published
    row = catalog.rows["across_categories"]
    client = create_app(settings, catalog).test_client()

    def exact_order(user):
        scores = np.asarray(item_vectors, np.float64) @ np.asarray(user["user_embed"], np.float64)
        seen = set(user["seen_item_ids"])
        return scores, [i for i in np.argsort(-scores, kind="stable") if items[i]["item_id"] not in seen]

    # A user whose candidates span several categories (many users' tops are one category: then the
    # cap can only backfill, and the row is relevance order).
    n_candidates = row.size * row.diversity.candidates_factor
    user = next(u for u in users if category_coverage([items[i] for i in exact_order(u)[1][:n_candidates]], CATEGORY) >= 4)
    scores, order = exact_order(user)
    top = order[:n_candidates]
    served = client.get(f"/v1/users/{user['user_id']}/homepage?rows=across_categories").get_json()["rows"][0]
    candidates = [{"id": items[i]["item_id"], "score": float(scores[i]), "categories": items[i]["categories"]}
                  for i in top]
    expected, info = apply(row.diversity, candidates, row.size,
                           {items[i]["item_id"]: [float(x) for x in item_vectors[i]] for i in top}, category_field=CATEGORY)
    assert [i["id"] for i in served["items"]] == [e["id"] for e in expected]
    assert served["diversity"] == info and info["policy"] == "mmr+max_per_category"
    per_category: dict[str, int] = {}
    for entry in served["items"][:row.size - info["backfilled"]]:
        for c in entry["categories"]:
            per_category[c] = per_category.get(c, 0) + 1
    assert max(per_category.values()) <= 2
    assert info["reranked"] > 0, "the policy changed nothing: the test shows nothing"
