"""Diverse rows: crowding (``max_per_category``) and an MMR rerank over a row's over-fetched candidates.

A row that declares ``diversity`` in the row config asks Elasticsearch for ``candidates_factor`` x its
k and keeps ``size`` of them, in this order of concerns:

* **crowding** — at most ``max_per_category`` items of the row share any one category;
* **MMR** (``mmr_lambda``) — greedily the candidate maximising
  ``lambda * relevance - (1 - lambda) * max similarity to what the row already holds``, relevance
  being the candidates' scores scaled to [0, 1], similarity the cosine of the item vectors (the
  Jaccard overlap of the categories where vectors are not at hand); 1 is pure relevance;
* **backfill** — if the cap leaves the row short, the best capped-out candidates fill it, so a row
  stays full whenever there are enough candidates.

Pure functions over the row's candidate items (dicts with ``id``, ``score`` and the category facet); the
service applies them after cross-row de-duplication, the study (``bench/diversity_study.py``) to
offline rankings. Ties keep the candidates' order; inputs are never modified.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from facetrec.catalog.diversity_policy import DiversityPolicy


def categories(item: Mapping, field: str | None) -> frozenset[str]:
    """The values of the catalog's category facet (``items.categories`` of its schema) an item holds."""
    value = item.get(field) if field else None
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, str) else value)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def apply(policy: DiversityPolicy, candidates: Sequence[Mapping], size: int,
          vectors: Mapping[str, Sequence[float]] | None = None, by_order: bool = False,
          category_field: str | None = None) -> tuple[list[Mapping], dict]:
    """At most ``size`` of ``candidates`` (best first) under ``policy``, and what it did:
    ``{"policy", "candidates", "reranked", "backfilled"}`` — ``reranked`` counts the returned items
    that are not where relevance order alone would have put them. ``by_order``: relevance is the
    candidates' order, not their scores (a ranked row: its order is the ranker's). ``category_field``:
    the item field the category cap and the fallback similarity read (the schema's ``items.categories``)."""
    pool = list(candidates)
    cats = [categories(c, category_field) for c in pool]
    use_vectors = vectors is not None and all(c["id"] in vectors for c in pool)
    scores = [float(len(pool) - i) for i in range(len(pool))] if by_order else \
        [float(c.get("score") or 0.0) for c in pool]
    low, high = min(scores, default=0.0), max(scores, default=0.0)
    relevance = [(s - low) / (high - low) if high > low else 1.0 for s in scores]

    def similarity(i: int, j: int) -> float:
        if use_vectors:
            return _cosine(vectors[pool[i]["id"]], vectors[pool[j]["id"]])
        return _jaccard(cats[i], cats[j])

    chosen: list[int] = []
    counts: dict[str, int] = {}
    closest = [0.0] * len(pool)   # max similarity of each candidate to the chosen ones
    remaining = list(range(len(pool)))
    while remaining and len(chosen) < size:
        allowed = [i for i in remaining if policy.max_per_category is None
                   or all(counts.get(c, 0) < policy.max_per_category for c in cats[i])]
        if not allowed:
            break
        if policy.mmr_lambda is None or not chosen:
            best = allowed[0]
        else:
            lam = policy.mmr_lambda
            best = max(allowed, key=lambda i: (lam * relevance[i] - (1 - lam) * closest[i], -i))
        chosen.append(best)
        remaining.remove(best)
        for c in cats[best]:
            counts[c] = counts.get(c, 0) + 1
        if policy.mmr_lambda is not None:
            for i in remaining:
                closest[i] = max(closest[i], similarity(i, best))
    backfilled = 0
    for i in remaining:      # the cap left the row short: the best capped-out candidates fill it
        if len(chosen) >= size:
            break
        chosen.append(i)
        backfilled += 1
    reranked = sum(1 for position, i in enumerate(chosen) if i != position)
    return [pool[i] for i in chosen], {"policy": policy.name, "candidates": len(pool), "reranked": reranked,
                                       "backfilled": backfilled}


def intra_list_diversity(vectors: Sequence[Sequence[float]]) -> float:
    """Mean pairwise (1 - cosine) of a list's item vectors (0 for fewer than two)."""
    pairs = [(a, b) for n, a in enumerate(vectors) for b in vectors[n + 1:]]
    return sum(1.0 - _cosine(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def category_coverage(items: Sequence[Mapping], field: str | None) -> int:
    """Distinct categories over a list's items."""
    return len(frozenset().union(*(categories(i, field) for i in items))) if items else 0
