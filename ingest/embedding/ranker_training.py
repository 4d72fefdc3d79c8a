"""Train the ranking stage (``facetrec.model.ranker``) on interactions the towers did not fit.

The towers train on each user's training sequence minus its last ``holdout`` items
(``TrainConfig.ranker_holdout``). For each held-out position the towers' top ``candidates`` for the
history before it (seen items excluded, as serving excludes them) become one LambdaRank query: the
item the user took next is the positive, the rest of what retrieval would have shown are the
negatives. Popularity in those queries is counted over what the towers trained on, so no query sees
its own label counted. LightGBM's LambdaRank fits them; the number of trees is chosen by early
stopping on the VALIDATION queries (each user's training sequence -> the validation item), the only
thing tuned on. Test is never looked at here.

    <work>/ranker/ ranker.txt (LightGBM), ranker_items.npz (item tables), ranker.json (meta, features)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from facetrec.catalog.fields import MAX_SEEN_ITEMS
from facetrec.model import ranker as served
from ingest.embedding.features import TrainingData, etl_schema


@dataclasses.dataclass
class RankerConfig:
    candidates: int = 100        # the towers' top-N a query re-sorts (the served rows' `rank: {candidates}`)
    num_leaves: int = 15
    learning_rate: float = 0.05
    max_trees: int = 400
    min_child_samples: int = 200   # chosen on validation (docs/model_study.md), as are the holdout and the rest
    early_stopping: int = 100    # rounds without a validation NDCG@10 gain
    seed: int = 42


@dataclasses.dataclass
class Queries:
    """LambdaRank queries: one group of candidates per (user, position)."""
    features: np.ndarray     # (rows, F)
    labels: np.ndarray       # (rows,)
    groups: np.ndarray       # (queries,) candidates per query
    covered: int             # queries whose target is among the candidates


def item_tables(data: TrainingData, etl_dir, holdout: int = 0) -> served.ItemTables:
    """The ranker's item tables from the ETL's items; popularity and transitions from the training
    sequences (what the served popularity is), or with ``holdout`` from what the towers trained on
    (each training sequence minus its last ``holdout`` items: the training queries' labels unseen)."""
    items = pd.read_parquet(Path(etl_dir) / "items.parquet").sort_values("item_idx")
    published_facet = etl_schema(etl_dir).items.published   # the catalog's publication date, if it has one
    published = np.concatenate([[np.nan], served.days_since_epoch(items[published_facet])
                                if published_facet and published_facet in items else np.full(len(items), np.nan)])
    from ingest.embedding.train import tower_sequences

    seqs = tower_sequences(data, holdout)
    counts = np.zeros(data.n_items + 1)
    for seq in seqs:
        np.add.at(counts, seq, 1.0)
    return served.ItemTables.build(data.item_ids, counts, data.item_facets, published, seqs)


def retrieve(user_vecs: np.ndarray, item_vecs: np.ndarray, histories: list[np.ndarray], n: int
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's top-``n`` items by dot product (padding and seen items excluded) and their scores,
    best first; ties by item index, as the offline evaluation breaks them."""
    out_items, out_scores = [], []
    for start in range(0, len(user_vecs), 512):
        items, scores = retrieve_scored(user_vecs[start:start + 512] @ item_vecs.T, histories[start:start + 512], n)
        out_items += items
        out_scores += scores
    return out_items, out_scores


def build_queries(tables: served.ItemTables, histories: list[np.ndarray], targets: np.ndarray,
                  user_vecs: np.ndarray, item_vecs: np.ndarray, n: int) -> Queries:
    cands, scores = retrieve(user_vecs, item_vecs, histories, n)
    feats, labels, groups = [], [], []
    covered = 0
    for hist, target, cand, score in zip(histories, targets, cands, scores):
        user = served.user_context(tables, hist[-MAX_SEEN_ITEMS:])   # what the user document carries
        feats.append(served.features(tables, user, cand, score))
        label = (cand == target).astype(np.float32)
        covered += int(label.any())
        labels.append(label)
        groups.append(len(cand))
    return Queries(np.concatenate(feats), np.concatenate(labels), np.array(groups), covered)


def holdout_queries(model, data: TrainingData, tables: served.ItemTables, holdout: int, n: int,
                    item_vecs: np.ndarray) -> Queries:
    """The training queries: every held-out position of every user's training sequence."""
    from ingest.embedding.embed import user_vectors

    histories, targets, rows = [], [], []
    for u, seq in enumerate(data.train_seqs):
        for p in range(max(len(seq) - holdout, 1), len(seq)):
            histories.append(seq[:p])
            targets.append(seq[p])
            rows.append(u)
    vecs = user_vectors(model, histories, data.user_features[np.array(rows, dtype=np.int64)], batch=256)
    return build_queries(tables, histories, np.array(targets), vecs, item_vecs, n)


def split_queries(model, data: TrainingData, tables: served.ItemTables, split: str, n: int,
                  item_vecs: np.ndarray) -> Queries:
    from ingest.embedding.embed import user_vectors
    from ingest.embedding.evaluate import split_inputs

    seqs, targets = split_inputs(data, split)
    vecs = user_vectors(model, seqs, data.user_features, batch=256)
    return build_queries(tables, seqs, targets, vecs, item_vecs, n)


def _positives_only(q: Queries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LambdaRank learns nothing from a query without a positive: drop those."""
    positive = np.array([lab.any() for lab in np.split(q.labels, np.cumsum(q.groups)[:-1])], dtype=bool)
    return q.features[np.repeat(positive, q.groups)], q.labels[np.repeat(positive, q.groups)], q.groups[positive]


def fit(train_q: Queries, valid_q: Queries, names: list[str], cfg: RankerConfig):
    import lightgbm

    x, y, g = _positives_only(train_q)
    vx, vy, vg = _positives_only(valid_q)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "num_leaves": cfg.num_leaves,
              "learning_rate": cfg.learning_rate, "min_child_samples": cfg.min_child_samples, "seed": cfg.seed,
              "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbosity": -1,
              "lambdarank_truncation_level": 20}
    train_set = lightgbm.Dataset(x, y, group=g, feature_name=names, free_raw_data=False)
    valid_set = lightgbm.Dataset(vx, vy, group=vg, reference=train_set)
    return lightgbm.train(params, train_set, num_boost_round=cfg.max_trees, valid_sets=[valid_set],
                          callbacks=[lightgbm.early_stopping(cfg.early_stopping, verbose=False)])


def ranked_scorer(model, data: TrainingData, ranker: served.Ranker, candidates: int | None = None):
    """An ``evaluate`` scorer: each user's top candidates by the towers (seen items excluded),
    re-sorted by ``ranker`` through the service's own code (``Ranker.rank_rows`` on item ids and dot
    products, the history as the user document carries it); the rest of the catalog below them."""
    from ingest.embedding.evaluate import model_scorer

    retrieval = model_scorer(model, data)
    n = candidates or ranker.candidates

    def score(seqs, rows):
        scores = retrieval(seqs, rows).astype(np.float64)
        cands, dots = retrieve_scored(scores, seqs, n)
        out = np.full(scores.shape, -1e9)
        for i, (seq, cand, dot) in enumerate(zip(seqs, cands, dots)):
            history = [data.item_ids[j] for j in seq[-MAX_SEEN_ITEMS:]]
            order, = ranker.rank_rows(history, [([data.item_ids[j] for j in cand], dot)])
            out[i, cand[order]] = len(cand) - np.arange(len(cand))
        return out
    return score


def retrieve_scored(scores: np.ndarray, histories: list[np.ndarray], n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The top-``n`` of each row of a (users x N+1) score matrix, padding and seen items excluded."""
    scores = scores.copy()
    scores[:, 0] = -np.inf
    for row, hist in enumerate(histories):
        scores[row, hist] = -np.inf
    top = np.argpartition(-scores, n, axis=1)[:, :n]
    items, values = [], []
    for row in range(len(top)):
        cand = top[row]
        order = np.lexsort((cand, -scores[row, cand]))
        items.append(cand[order])
        values.append(scores[row, cand[order]].astype(np.float32))
    return items, values


def train_ranker(model, data: TrainingData, etl_dir, out_dir, holdout: int, cfg: RankerConfig | None = None,
                 model_version: str = "", log=print) -> dict:
    """Fit the ranker for ``model`` (towers trained with ``ranker_holdout=holdout``), write its files
    to ``out_dir`` and return a summary with validation HR@10 / NDCG@10 with and without it."""
    cfg = cfg or RankerConfig()
    if holdout < 1:
        raise ValueError("the ranker trains on held-out positions: train the towers with ranker_holdout >= 1")
    started = time.perf_counter()
    train_tables = item_tables(data, etl_dir, holdout)
    serve_tables = item_tables(data, etl_dir)
    from ingest.embedding.embed import item_matrix

    item_vecs = item_matrix(model, data.n_items)   # once for both sets of queries
    train_q = holdout_queries(model, data, train_tables, holdout, cfg.candidates, item_vecs)
    valid_q = split_queries(model, data, serve_tables, "valid", cfg.candidates, item_vecs)
    names = served.feature_names(serve_tables.facet_names)
    booster = fit(train_q, valid_q, names, cfg)
    importance = dict(zip(names, booster.feature_importance("gain").round(1).tolist()))
    version = f"{model_version or 'model'}-lambdarank-t{booster.best_iteration or booster.num_trees()}"
    summary = {"version": version, "model_version": model_version, "candidates": cfg.candidates, "holdout": holdout,
               "trees": int(booster.best_iteration or booster.num_trees()),
               "train_queries": int(len(train_q.groups)), "train_queries_with_positive": train_q.covered,
               "config": dataclasses.asdict(cfg), "importance_gain": importance}
    served.save(out_dir, booster, serve_tables, summary)
    # Scored again from the saved files through the service's code: what was written is what serves.
    from ingest.embedding.evaluate import evaluate, model_scorer

    valid_retrieval = evaluate(model_scorer(model, data), data, "valid")
    valid_ranked = evaluate(ranked_scorer(model, data, served.Ranker.load(out_dir)), data, "valid")
    summary["valid"] = {"retrieval": {k: valid_retrieval[k] for k in ("HR@10", "NDCG@10")},
                        "ranked": {k: valid_ranked[k] for k in ("HR@10", "NDCG@10")}}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    served.save_meta(out_dir, summary)
    log(f"ranker: {summary['trees']} trees on {summary['train_queries_with_positive']:,} of "
        f"{summary['train_queries']:,} held-out queries; valid HR@10 {valid_retrieval['HR@10']:.4f} -> "
        f"{valid_ranked['HR@10']:.4f}, NDCG@10 {valid_retrieval['NDCG@10']:.4f} -> {valid_ranked['NDCG@10']:.4f}")
    return summary
