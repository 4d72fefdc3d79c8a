"""The Elasticsearch search one row becomes (``build_row_search``), and the user vector as it is sent.

Values only ever become term values, range bounds or script ``params``; nothing a caller sends is
concatenated into a script or a query string.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from facetrec.catalog.fields import BASE_SOURCE_FIELDS, ITEM_VECTOR_FIELD
from facetrec.catalog.rows import Row, row_filter
from facetrec.serving.scoring import SCRIPT_SCORE_SHIFT

# knn rows exclude the user's seen items AFTER the vector search, so the knn filter (user facets +
# row filters) is the same for every user and Elasticsearch can reuse its cached bitset; to make
# up for the dropped hits a row asks for k + #seen neighbours. A user with more seen items than
# SEEN_OVERFETCH_MAX gets them inside the knn filter instead (exact, but built per request), so a
# row never comes back short because too many seen items ranked at the top.
SEEN_OVERFETCH_MAX = 100
MAX_NUM_CANDIDATES = 10_000   # Elasticsearch rejects more


def build_row_search(row: Row, *, user_vector: list[float] | None, user_filters: Sequence[dict],
                     exclude_ids: Iterable[str], k: int, mode: str, num_candidates_factor: int,
                     vector_field: str = ITEM_VECTOR_FIELD, script_lang: str = "painless",
                     rescore_oversample: float = 0.0, row_clauses: Sequence[dict] | None = None,
                     candidates: int | None = None, source_fields: Sequence[str] = BASE_SOURCE_FIELDS,
                     fetch: dict | None = None) -> dict:
    """The ``_search`` body for one row.

    * ``knn``: a knn query whose own filter holds the user and row filters (a true pre-filter that
      is the same for every user of the row, so its bitset can be cached), with the seen items
      removed from its neighbours by a ``must_not`` around it (``SEEN_OVERFETCH_MAX`` above).
      With ``rescore_oversample`` (quantized vectors), the best k x oversample are rescored with
      the float vectors (``rescore_vector``): exact scores, and the order quantization blurred.
    * ``script_score``: the classic exact form in ``script_lang`` (``painless``, or ``facetrec_vector``
      on the local node); the vector goes into ``params``.
    * no user vector: the cold-start popularity ranking under the same filters.

    ``user_vector`` is a list of floats prepared once per request (``query_vector``); the seen ids
    are de-duplicated here, once per row (``row_filter`` takes them as they are). ``row_clauses``
    replaces the row's own filter clauses inside the knn filter (a partition walk leaves out the
    value its field pins); ``candidates`` sets num_candidates (at least the neighbours asked for)
    instead of k x ``num_candidates_factor``. ``fetch``: how the hits' fields are asked for
    (``facetrec.serving.hit_fields.HitFields.request``), instead of ``_source`` ``source_fields``.
    """
    exclude_ids = list(dict.fromkeys(exclude_ids))
    if row_clauses is not None:
        row = dataclasses.replace(row, filter=tuple(row_clauses))
    body: dict[str, Any] = {"size": k, **(fetch if fetch is not None else {"_source": list(source_fields)})}
    if user_vector is None:
        body["query"] = row_filter(row, user_filters, exclude_ids)
        body["sort"] = [{"popularity": {"order": "desc", "missing": "_last"}}, {"item_id": "asc"}]
        return body
    if mode == "knn":
        after = exclude_ids if len(exclude_ids) <= SEEN_OVERFETCH_MAX else []   # seen ids removed after the search
        neighbours = k + len(after)
        knn = {"field": vector_field, "query_vector": user_vector, "k": neighbours,
               "num_candidates": min(max(candidates, neighbours), MAX_NUM_CANDIDATES) if candidates
               else num_candidates(k, num_candidates_factor, at_least=neighbours),
               "filter": row_filter(row, user_filters, () if after else exclude_ids)}
        if rescore_oversample:
            knn["rescore_vector"] = {"oversample": rescore_oversample}
        body["query"] = {"bool": {"must": [{"knn": knn}], "must_not": [{"ids": {"values": after}}]}} if after else {"knn": knn}
    elif mode == "script_score":
        body["query"] = {"script_score": {"query": row_filter(row, user_filters, exclude_ids),
                                          "script": dot_product_script(user_vector, vector_field, script_lang)}}
    else:
        raise ValueError(f"unknown retrieval mode {mode!r}")
    return body


def query_vector(vector: Sequence[float], similarity: str) -> list[float]:
    """The user vector as sent to Elasticsearch: unit length when the similarity needs unit vectors
    (``dot_product``, ``cosine``), raw for ``max_inner_product``. The ranking is the same."""
    values = [float(x) for x in vector]
    if similarity in ("dot_product", "cosine"):
        norm = math.sqrt(sum(x * x for x in values))
        if norm > 0:
            values = [x / norm for x in values]
    return values


def num_candidates(k: int, factor: int, at_least: int = 0) -> int:
    """Candidates per shard for ``k`` results: k * factor, at least 100, ``at_least`` (the neighbours
    asked for) and k, at most ES's limit."""
    return min(max(k * factor, 100, k, at_least), MAX_NUM_CANDIDATES)


def dot_product_script(vector: list[float], vector_field: str, script_lang: str) -> dict:
    """``max(0, dot(vector, doc[vector_field]) + SCRIPT_SCORE_SHIFT)`` as a script of ``script_lang``.

    Both forms take the same score contract (``facetrec.serving.scoring.script_score_to_dot`` inverts it);
    the source is a constant and the vector only ever travels in ``params``.
    """
    if script_lang == "painless":
        return {"source": f"double v = dotProduct(params.query_vector, '{vector_field}'); "
                          "return Math.max(0, v + params.shift);",
                "params": {"query_vector": vector, "shift": SCRIPT_SCORE_SHIFT}}
    if script_lang == "facetrec_vector":  # elasticsearch_local's VectorScriptPlugin
        return {"lang": "facetrec_vector", "source": "dot_product",
                "params": {"field": vector_field, "query_vector": vector, "shift": SCRIPT_SCORE_SHIFT}}
    raise ValueError(f"unknown script language {script_lang!r}")
