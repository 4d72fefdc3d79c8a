"""Offline evaluation: time-ordered leave-last-out, FULL ranking over all items, already-seen
items excluded, ties broken by item index (a fixed order: most popular first).

The model and the baselines (MostPop, first-order Markov) are scored by the same code: each is a
function from input sequences to a (users x items) score matrix.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch

from ingest.embedding.features import TrainingData

Scorer = Callable[[list[np.ndarray], np.ndarray], np.ndarray]   # (sequences, user rows) -> (U, N+1) scores


def split_inputs(data: TrainingData, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Input sequences and target items of 'valid' (train -> valid) or 'test' (train+valid -> test)."""
    if split == "valid":
        return data.train_seqs, data.valid_items
    if split == "test":
        return [np.append(s, v) for s, v in zip(data.train_seqs, data.valid_items)], data.test_items
    raise ValueError(split)


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, seen: list[np.ndarray], n_items: int) -> dict:
    """HR@10 (= Recall@10 with one held-out item), NDCG@10, Recall@50, coverage@10."""
    scores = scores.astype(np.float64, copy=True)
    scores[:, 0] = -np.inf
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    idx = np.arange(scores.shape[1])[None, :]
    ahead = (scores > target_scores[:, None]) | ((scores == target_scores[:, None]) & (idx < targets[:, None]))
    ranks = ahead.sum(axis=1)
    # Top-10 lists under the same tie-break, for coverage.
    order = np.lexsort((np.broadcast_to(idx, scores.shape), -scores), axis=1)[:, :10]
    return {
        "HR@10": float(np.mean(ranks < 10)),
        "NDCG@10": float(np.mean(np.where(ranks < 10, 1.0 / np.log2(ranks + 2), 0.0))),
        "Recall@50": float(np.mean(ranks < 50)),
        "coverage@10": float(len(np.unique(order)) / n_items),
        "users": int(len(targets)),
    }


def most_popular(data: TrainingData) -> Scorer:
    def score(seqs, rows):
        return np.broadcast_to(data.train_counts, (len(seqs), data.n_items + 1)).copy()
    return score


def markov(data: TrainingData) -> Scorer:
    """First-order Markov chain on training transitions; popularity breaks ties (and backs off)."""
    src = np.concatenate([s[:-1] for s in data.train_seqs if len(s) > 1])
    dst = np.concatenate([s[1:] for s in data.train_seqs if len(s) > 1])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    starts = np.searchsorted(src, np.arange(data.n_items + 2))
    popularity = data.train_counts / max(data.train_counts.max(), 1.0)

    def score(seqs, rows):
        out = np.tile(popularity * 1e-3, (len(seqs), 1))
        for i, seq in enumerate(seqs):
            if len(seq):
                last = seq[-1]
                np.add.at(out[i], dst[starts[last]:starts[last + 1]], 1.0)
        return out
    return score


def model_scorer(model, data: TrainingData, batch_size: int = 256, served: bool = False) -> Scorer:
    """The model's scores: the user vector's dot products; a multi-interest model's best interest's
    (what it was trained on), or with ``served`` its current interest's (what an unfiltered row is
    searched with: ``ingest.embedding.model.current_interest_first``)."""
    from ingest.embedding.embed import user_interest_vectors, user_vectors

    def score(seqs, rows):
        model.eval()
        with torch.no_grad():
            items = model.item_tower(torch.arange(data.n_items + 1)).numpy()
        if served:
            return user_vectors(model, seqs, data.user_features[rows], batch_size) @ items.T
        users = user_interest_vectors(model, seqs, data.user_features[rows], batch_size)
        scores = users @ items.T
        return scores.max(axis=1) if users.ndim == 3 else scores
    return score


def evaluate(scorer: Scorer, data: TrainingData, split: str, users: np.ndarray | None = None,
             batch: int = 512) -> dict:
    seqs, targets = split_inputs(data, split)
    rows = np.arange(len(seqs)) if users is None else users
    parts = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        chunk_seqs = [seqs[r] for r in chunk]
        parts.append((scorer(chunk_seqs, chunk), targets[chunk], chunk_seqs))
    scores = np.concatenate([p[0] for p in parts])
    return ranking_metrics(scores, np.concatenate([p[1] for p in parts]), [s for p in parts for s in p[2]],
                           data.n_items)


def comparison_table(results: dict[str, dict]) -> str:
    header = f"{'model':<16} {'HR@10':>7} {'NDCG@10':>8} {'Recall@50':>10} {'coverage@10':>12} {'users':>6}"
    lines = [header, "-" * len(header)]
    for name, m in results.items():
        lines.append(f"{name:<16} {m['HR@10']:>7.4f} {m['NDCG@10']:>8.4f} {m['Recall@50']:>10.4f} "
                     f"{m['coverage@10']:>12.4f} {m['users']:>6}")
    return "\n".join(lines)


def evaluate_all(model, data: TrainingData, split: str = "test") -> dict[str, dict]:
    results = {"MostPop": evaluate(most_popular(data), data, split),
               "Markov": evaluate(markov(data), data, split)}
    if model is not None:
        results["two-tower"] = evaluate(model_scorer(model, data), data, split)
    return results


def write_results(results: dict, path) -> None:
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)
