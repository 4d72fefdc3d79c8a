"""Maximum inner product search as nearest-neighbour search: how item vectors are stored in a
graph (HNSW) generation and how a user vector is sent to it.

The model scores by raw inner product, and its item vectors have unequal norms. A proximity graph
finds near neighbours well but misses inner-product maxima (inner product is not a metric; see
``bench/mips_reduction.py``). The standard reduction (Bachrach et al., RecSys 2014) turns one into
the other without changing the ranking. With ``M`` the largest item norm of the generation (its
*item vector scale*), each item vector ``x`` is stored as the unit vector

    x' = [x / M, sqrt(1 - |x|^2 / M^2)]

and a user vector ``q`` is sent to the knn search as the unit vector ``[q / |q|, 0]``. Then
``x' . q' = (x . q) / (M |q|)``: for one user, the same order as the raw inner product, now a
``dot_product`` (cosine) search. ``script_score`` sends ``[M q, 0]``, whose dot product with
``x'`` is exactly ``x . q``. The raw score of a knn hit is ``(2 _score - 1) M |q|``.

The pipeline records ``M`` in the item index's ``_meta`` and in every user document of the pair
(``item_vector_scale``); the service reads it with the user vector, so how a page is asked follows
the pair it reads (a rollback to a generation stored without the reduction is served as it was).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from facetrec.serving import scoring

if TYPE_CHECKING:
    from facetrec.settings import Settings


def applies(settings: "Settings") -> bool:
    """Whether a new item generation stores reduced vectors (``FACETREC_MIPS_REDUCTION``, on by
    default): only for the model's raw inner product on a graph index; an exact ``flat`` scan ranks
    raw vectors exactly already."""
    return (settings.mips_reduction and settings.similarity == "max_inner_product"
            and settings.graph_index)


def item_vector(vector: Sequence[float], scale: float) -> list[float]:
    """``[x / M, sqrt(1 - |x|^2 / M^2)]``: unit length for every ``|x| <= M``. A vector longer than
    ``M`` (beyond rounding, 1e-9 of M) has no such form: ValueError naming both."""
    values = [float(x) / scale for x in vector]
    squared = sum(v * v for v in values)
    if squared > (1 + 1e-9) ** 2:
        raise ValueError(f"vector norm {math.sqrt(squared) * scale:.6g} exceeds the generation's item vector "
                         f"scale {scale:.6g}")
    return values + [math.sqrt(1.0 - squared) if squared < 1.0 else 0.0]


def model_direction(stored: Sequence[float]) -> list[float]:
    """A stored (reduced) item vector without its extra coordinate: ``x / M``, the model's raw
    vector up to the generation's scale (what a cosine between two items needs)."""
    return list(stored[:-1])


def item_vectors(vectors: np.ndarray, scale: float) -> np.ndarray:
    """``item_vector`` for a matrix of item vectors (benchmarks), float32."""
    scaled = np.asarray(vectors, dtype=np.float64) / scale
    rest = np.sqrt(np.clip(1.0 - (scaled ** 2).sum(axis=1), 0.0, None))
    return np.hstack([scaled, rest[:, None]]).astype(np.float32)


def knn_query(vector: Sequence[float]) -> list[float]:
    """``[q / |q|, 0]``: the unit query of the ``dot_product`` search."""
    norm = math.sqrt(sum(float(x) * float(x) for x in vector))
    return [float(x) / norm for x in vector] + [0.0] if norm > 0 else [float(x) for x in vector] + [0.0]


def script_query(vector: Sequence[float], scale: float) -> list[float]:
    """``[M q, 0]``: its dot product with a stored item vector is the raw ``x . q``."""
    return [float(x) * scale for x in vector] + [0.0]


def knn_score_to_dot(score: float, vector_norm: float, scale: float) -> float:
    """The raw inner product of a knn hit on a reduced generation: its ``dot_product`` cosine
    (``facetrec.serving.scoring``) times ``M |q|``."""
    return scoring.knn_score_to_dot(score, "dot_product") * vector_norm * scale


def max_norm(vectors: np.ndarray) -> float:
    """The item vector scale of a matrix of item vectors: the largest finite norm."""
    norms = np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1)
    norms = norms[np.isfinite(norms)]
    return float(norms.max()) if norms.size else 0.0
