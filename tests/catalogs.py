"""The demo's catalogs published without training, for tests of what the demo serves.

``movielens_records``: MovieLens-100k as the demo loads it (``ingest.embedding.datasets``: its
movies, genres as ``categories``, release dates; its users and their ratings in time order), with
item vectors from a truncated SVD of the rating matrix (a second or so of numpy) instead of the
trained model, and user vectors from a seeded user tower (``SeededUserModel``) exported like the
nightly one, so the events API works on it too. Same ids, facets, rows and response shapes as the
demo; the scores differ.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def schema_of(facets: dict[str, str], user_filters=(), name: str = "test", features=(), **items):
    """A catalog schema of these facets (name -> type), the named ones user filters or features of the
    item tower: for tests whose rows filter on a few facets of their own."""
    from facetrec.catalog.schema import CatalogSchema

    return CatalogSchema.from_dict({"name": name, "items": {**items, "facets": {
        facet: {"type": kind, **({"user_filter": True} if facet in user_filters else {}),
                **({"feature": True} if facet in features else {})}
        for facet, kind in facets.items()}}})


def bundled_schema(name: str):
    """The catalog schema of a bundled catalog (catalogs/<name>/catalog.yaml)."""
    from facetrec.catalog.schema import CatalogSchema
    from facetrec.settings import CATALOGS_DIR

    return CatalogSchema.load(CATALOGS_DIR / name / "catalog.yaml")


def movielens_records(dims: int = 64):
    """(items, users, item_vectors, model): records in run_reindex's input schema."""
    from ingest.embedding.datasets import load_movielens_100k
    from ingest.embedding.seeded_encoder import SeededUserModel

    events, catalog, _ = load_movielens_100k()
    item_ids = catalog["item_id"].tolist()
    column = {item_id: j for j, item_id in enumerate(item_ids)}
    user_ids = sorted(events["user_id"].unique(), key=int)
    row = {user_id: i for i, user_id in enumerate(user_ids)}
    ratings = np.zeros((len(user_ids), len(item_ids)), np.float32)
    ratings[events["user_id"].map(row).to_numpy(), events["item_id"].map(column).to_numpy()] = 1.0
    _, singular, vt = np.linalg.svd(ratings - ratings.mean(axis=0), full_matrices=False)
    item_vectors = (vt[:dims].T * np.sqrt(singular[:dims]) / np.sqrt(singular[0])).astype(np.float32)
    counts = ratings.sum(axis=0)
    popularity = counts / counts.max()
    items = []
    for j, record in enumerate(catalog.to_dict("records")):
        item = {"item_id": record["item_id"], "title": record["title"], "categories": list(record["categories"]),
                "popularity": float(popularity[j]), "item_embed": item_vectors[j]}
        if record["published_at"]:
            item["published_at"] = record["published_at"]
        items.append(item)
    model = SeededUserModel(item_vectors, item_ids)
    history = events.sort_values(["timestamp", "item_id"], kind="stable").groupby("user_id", sort=False)["item_id"]
    histories = {user_id: list(ids) for user_id, ids in history}
    vectors = user_vectors(model, [histories[user_id] for user_id in user_ids])
    # Sample users (most recently updated first) come in id order: user 1 is the page's first.
    users = [{"user_id": user_id, "seen_item_ids": histories[user_id], "user_embed": vectors[n],
              "updated_at": (START - timedelta(seconds=n)).isoformat()} for n, user_id in enumerate(user_ids)]
    return items, users, item_vectors, model


def user_vectors(model, histories: list[list[str]]) -> np.ndarray:
    """``model.user_vector`` of many histories in one batch (the eager tower; one call per user is slow)."""
    import torch

    from facetrec.model.user_encoder import left_pad

    seqs = [np.array([model.index[i] for i in h if i in model.index], dtype=np.int64) for h in histories]
    with torch.no_grad():
        return model.eager(torch.from_numpy(left_pad(seqs, model.max_len)),
                           torch.zeros((len(seqs), 0), dtype=torch.int64)).numpy()


def movielens_ranker(items: list[dict], users: list[dict], out_dir, model_version: str):
    """A real LightGBM ranker (``ingest.embedding.ranker_training.fit``) for the records of
    ``movielens_records``, saved to ``out_dir`` as the nightly job saves one: trained on queries whose
    positive is the LEAST popular of each user's top 100, so it always changes a row's order."""
    from facetrec.model import ranker as ranking
    from ingest.embedding.ranker_training import RankerConfig, build_queries, fit, retrieve

    ids = [""] + [i["item_id"] for i in items]
    index = {item_id: j for j, item_id in enumerate(ids) if j}
    values = sorted({c for i in items for c in i["categories"]})
    facets = np.zeros((len(ids), max(len(i["categories"]) for i in items)), dtype=np.int64)
    for j, item in enumerate(items, 1):
        facets[j, :len(item["categories"])] = [values.index(c) + 1 for c in item["categories"]]
    counts = np.concatenate([[0], [i["popularity"] * 500 for i in items]])
    sequences = [np.array([index[i] for i in u["seen_item_ids"]]) for u in users]
    tables = ranking.ItemTables.build(ids, counts, {"categories": facets}, ranking.days_since_epoch(
        [None] + [i.get("published_at") for i in items]), sequences)
    item_vectors = np.vstack([np.zeros(len(items[0]["item_embed"]))] + [np.asarray(i["item_embed"]) for i in items])
    user_vectors = np.array([u["user_embed"] for u in users])
    cands, _ = retrieve(user_vectors[:400], item_vectors, sequences[:400], 100)
    targets = np.array([c[np.argmin(counts[c])] for c in cands])
    train_q = build_queries(tables, sequences[:300], targets[:300], user_vectors[:300], item_vectors, 100)
    valid_q = build_queries(tables, sequences[300:400], targets[300:400], user_vectors[300:400], item_vectors, 100)
    booster = fit(train_q, valid_q, ranking.feature_names(tables.facet_names), RankerConfig(min_child_samples=20))
    return ranking.save(out_dir, booster, tables, {"version": f"{model_version}-lambdarank",
                                                   "model_version": model_version, "candidates": 100})
