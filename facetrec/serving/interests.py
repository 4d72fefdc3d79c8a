"""Which of a multi-interest user's vectors each row is searched with.

A model of K interests (``ModelConfig.interests``) gives each user K vectors (``user_interests`` in
the user index, the *current* interest first: the one the user's latest item points to, which is
also ``user_embed``). A row whose items lean one way (a genre, a format) is searched with the
interest closest to them: the one with the largest dot product with the row's centroid, the mean
vector of a sample of its items recorded with the item generation (``GenerationStats.centroid``).
A row without a centroid (ad-hoc, or counted before centroids) and every row of a one-vector user
use the current interest. Scores stay the model's dot products, with the interest the row used.
"""

from __future__ import annotations

from typing import Sequence


def closest_interest(interests: Sequence[Sequence[float]], centroid: Sequence[float] | None) -> int:
    """The index of the interest with the largest dot product with ``centroid`` (0, the current
    interest, without a centroid or on a tie)."""
    if not centroid or len(interests) < 2:
        return 0
    scores = [sum(a * b for a, b in zip(vector, centroid)) for vector in interests]
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))
    return best


def row_interests(rows, user, stats) -> dict[str, int]:
    """row id -> the interest it is searched with (only rows that do not use the current one)."""
    if user is None or not user.interests or len(user.interests) < 2 or stats is None:
        return {}
    out = {}
    for row in rows:
        k = closest_interest(user.interests, stats.centroid(row))
        if k:
            out[row.id] = k
    return out
