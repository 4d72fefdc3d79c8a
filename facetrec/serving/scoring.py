"""Elasticsearch's vector score transforms and their inverses.

Elasticsearch never returns a negative score, so a ``knn`` hit's ``_score`` is a monotone
transform of the similarity. The service reports the raw dot product so that scores compare
across rows and retrieval modes.
"""

from __future__ import annotations

# script_score: dotProduct(...) + SCRIPT_SCORE_SHIFT, floored at 0. Scores are raw dot products
# of model vectors; the shift keeps any realistic dot product non-negative.
SCRIPT_SCORE_SHIFT = 1000.0


def knn_score_to_dot(score: float, similarity: str) -> float:
    """Invert the ``_score`` of a knn hit into the raw similarity value."""
    if similarity == "max_inner_product":
        # ES: dot < 0 -> 1 / (1 - dot); else dot + 1
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
    if similarity in ("dot_product", "cosine"):
        # ES: (1 + dot) / 2 (dot_product on unit vectors equals cosine)
        return 2.0 * score - 1.0
    raise ValueError(f"no inverse for similarity {similarity!r}")


def script_score_to_dot(score: float) -> float:
    return score - SCRIPT_SCORE_SHIFT

