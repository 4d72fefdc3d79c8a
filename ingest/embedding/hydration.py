"""Boosting inside the vector search, measured offline: "hydrated" item vectors.

Etsy's ANN boosting appends quality features to each item vector and matching weights to the query,
so one inner product ranks by ``user . item + w_pop * popularity + w_fresh * freshness`` without an
over-fetch. This module measures what that would buy: the two coordinates (log popularity and
freshness, standardized over the catalog, from the ranker's item tables) and their weights chosen
on VALIDATION NDCG@10 over a small grid; ``bench/model_study.py`` reports the chosen boost on
validation and test beside retrieval alone and the ranker. The service does not hydrate vectors
(docs/design.md, the ranking stage: on MovieLens-100k the boost chosen on validation gains nothing
there).
"""

from __future__ import annotations

import itertools

import numpy as np

from facetrec.model.ranker import ItemTables
from ingest.embedding.features import TrainingData

GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def boost_coordinates(tables: ItemTables) -> np.ndarray:
    """(N+1, 2): standardized log popularity and freshness (newer is higher; unknown dates are the
    oldest), the extra coordinates a hydrated item vector would carry; row 0 (padding) is zero."""
    pop = tables.log_popularity.astype(np.float64)
    age = tables.freshness_days.astype(np.float64)
    age = np.where(np.isfinite(age), age, np.nanmax(age[1:]) if np.isfinite(age[1:]).any() else 0.0)
    out = np.zeros((len(pop), 2))
    for j, column in enumerate((pop, -age)):
        spread = column[1:].std()
        out[1:, j] = (column[1:] - column[1:].mean()) / spread if spread > 0 else 0.0
    return out


def hydrated_scorer(model, data: TrainingData, coordinates: np.ndarray, weights: tuple[float, float]):
    """An ``evaluate`` scorer: the towers' dot product plus the weighted boost coordinates."""
    from ingest.embedding.evaluate import model_scorer

    retrieval = model_scorer(model, data)
    boost = coordinates @ np.asarray(weights, dtype=np.float64)

    def score(seqs, rows):
        return retrieval(seqs, rows) + boost[None, :]
    return score


def choose_weights(model, data: TrainingData, coordinates: np.ndarray, grid=GRID) -> tuple[tuple[float, float], dict]:
    """The (popularity, freshness) weights with the best validation NDCG@10 (ties: the smaller
    boost), and the validation metrics of each grid point."""
    from ingest.embedding.embed import item_matrix, user_vectors
    from ingest.embedding.evaluate import ranking_metrics, split_inputs

    seqs, targets = split_inputs(data, "valid")
    base = user_vectors(model, seqs, data.user_features) @ item_matrix(model, data.n_items).T
    table = {}
    for weights in itertools.product(grid, grid):
        table[weights] = ranking_metrics(base + (coordinates @ np.asarray(weights))[None, :], targets, seqs,
                                         data.n_items)
    best = max(table, key=lambda w: (round(table[w]["NDCG@10"], 6), -sum(w)))
    return best, {f"{w[0]},{w[1]}": {k: m[k] for k in ("HR@10", "NDCG@10")} for w, m in table.items()}
