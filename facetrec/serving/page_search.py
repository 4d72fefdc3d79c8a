"""The searches of one homepage: its rows' plans (``facetrec.serving.planner``) turned into the lines of ONE
``_msearch``, and that ``_msearch``'s responses turned back into one response per row.

Rows whose plan walks a graph and filters after the walk (``Plan.shared``) are asked together in
one search: a ``dis_max`` of the walks they need (one per graph: the whole catalog's, a partition),
the user filters and the seen items applied to what the walks found, and a ``filters`` aggregation
with one bucket per row (the row's own filter) holding its best hits (``top_hits``, by score). The
other rows are one search each, as before: the exact scan of a filtered set, a graph walk with the
filter inside it, a ``script_score`` scan, or the popularity ranking of a user without a vector.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from facetrec.catalog.counts import GenerationStats
from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.rows import Row
from facetrec.catalog.schema import CatalogSchema
from facetrec.serving import mips
from facetrec.serving.hit_fields import HitFields, ShapedHits
from facetrec.serving.interests import row_interests
from facetrec.serving.planner import Plan, Thresholds, partition_candidates, plan_row, walk_size
from facetrec.serving.row_queries import MAX_NUM_CANDIDATES, SEEN_OVERFETCH_MAX, build_row_search, query_vector

MAX_OVERFETCH = 200   # later rows ask for at most this many more items, to backfill after de-duplication
# A bucket's top hits are capped by the index setting index.max_inner_result_window (100 unless
# set otherwise): a row needing more walks on its own, with its filter inside the walk.
MAX_SHARED_HITS = 100


@dataclasses.dataclass(frozen=True)
class RowSearch:
    """How one row of the page is asked: its plan's name, the response it reads, and (shared rows)
    its bucket of the shared search."""
    row: Row
    plan: str            # a planner plan, "script_score" or "popular"
    slot: int            # index of its response in the _msearch
    k: int               # hits it needs (its size, over-fetched for de-duplication and diversity)
    bucket: str | None = None
    category_field: str | None = None   # the catalog's category facet (a diverse row's cap)
    interest: int = 0    # the user's interest it is searched with (``facetrec.serving.interests``; 0: the current)


@dataclasses.dataclass(frozen=True)
class PageSearch:
    lines: list[dict]                  # the _msearch body: header, body, header, body, ...
    rows: list[RowSearch]
    hit_fields: HitFields | None = None   # how the hits carry their fields (None: as _source)

    def split(self, responses: Sequence[dict]) -> list[dict]:
        """One response per row: a row of the shared search gets the hits of its bucket (and the
        shared search's took, timed_out or error); the others their own response."""
        out = []
        shape = self.hit_fields.hit if self.hit_fields is not None else (lambda hit: hit)
        for rs in self.rows:
            response = responses[rs.slot]
            if "error" in response:
                out.append(response)
                continue
            if rs.bucket is None:   # a filtered response (filter_path) has no hits key when it found none
                hits = response.get("hits", {}).get("hits", [])
                out.append({**response, "hits": {"hits": ShapedHits(hits, shape)}})
                continue
            hits = response.get("aggregations", {}).get(rs.bucket, {}).get("top", {}).get("hits", {}).get("hits", [])
            out.append({"took": response.get("took", 0), "timed_out": response.get("timed_out", False),
                        "shared": True, "hits": {"hits": ShapedHits(hits[:rs.k], shape)}})
        return out


def query_vectors(user, similarity: str) -> dict[str, list[float]]:
    """The user vector as each retrieval mode sends it, once per request: reduced (``facetrec.serving.mips``)
    when the user's item generation stores reduced vectors, else unit length when the similarity
    needs it (``query_vector``)."""
    if user.item_vector_scale is not None:
        return {"knn": mips.knn_query(user.vector), "script_score": mips.script_query(user.vector, user.item_vector_scale)}
    vector = query_vector(user.vector, similarity)
    return {"knn": vector, "script_score": vector}


def row_mode(row: Row, mode: str | None, target) -> str:
    return mode or row.retrieval or target.default_mode


def _legacy_plan(row: Row, user) -> Plan:
    """Without stats of the pair (a caller that plans nothing): a row pinned exact scans the flat
    copy when the user's pair has one; every other row walks the graph with its filter inside."""
    if row.exact and user.item_exact_vectors:
        return Plan("exact", (EXACT_VECTOR_FIELD,), pre=row.filter)
    return Plan("filtered_graph", (ITEM_VECTOR_FIELD,), pre=row.filter)


def build_page_search(rows: Sequence[Row], user, user_filters: Sequence[dict], target, mode: str | None = None,
                      sizes: dict[str, int] | None = None, script_lang: str = "painless",
                      stats: GenerationStats | None = None, schema: CatalogSchema | None = None,
                      interests: dict[str, int] | None = None) -> PageSearch:
    """The page's ``_msearch`` lines and how each row reads its answer. Rows later on the page ask
    for more (the sizes of the rows before them, at most MAX_OVERFETCH) so they can be backfilled
    after cross-row de-duplication; ``stats`` (the pair's, ``facetrec.catalog.counts``) lets the
    planner choose per row, without them every row is asked as ``_legacy_plan`` says. ``schema``
    (the pair's catalog schema) says what each hit carries (``source_fields``) and which facet a
    diverse row caps. A multi-interest user's rows are each searched with the interest closest to
    the row's items (``facetrec.serving.interests``): the post-filtered rows of one interest share
    one search, so a page makes at most one search per row still (``interests``: row id -> interest,
    given instead of chosen from ``stats``: an exact re-ask of a page served without them planned)."""
    thresholds: Thresholds = target.thresholds
    hit_fields = HitFields.of(schema, doc_values=stats is not None and stats.display_doc_values)
    category_field = schema.items.categories if schema is not None else None
    interest_of = interests if interests is not None else row_interests(rows, user, stats)
    walk_candidates = partition_candidates(stats.partitions, thresholds.partition_candidates) if stats else {}
    by_interest: dict[int, dict[str, list[float]]] = {}

    def vectors_for(row: Row) -> dict[str, list[float]]:
        k = interest_of.get(row.id, 0)
        if k not in by_interest:
            by_interest[k] = query_vectors(user.with_interest(k), target.similarity)
        return by_interest[k]

    seen = list(dict.fromkeys(user.seen_item_ids)) if user else []
    timeout = f"{max(int(target.request_timeout_s * 800), 50)}ms"
    lines: list[dict] = []
    searches: list[RowSearch] = []
    shared: dict[int, list[tuple[int, Row, Plan, int, int]]] = {}   # interest -> [(position, row, plan, k, shown)]
    placed: list[RowSearch | None] = []
    earlier = 0
    for row in rows:
        size = (sizes or {}).get(row.id, row.size)
        shown = row.candidates(size)   # its size, or a diverse or ranked row's candidates
        k = shown + (min(earlier, MAX_OVERFETCH) if target.dedupe_across_rows else 0)
        earlier += size
        this_mode = row_mode(row, mode, target)
        if user is None or this_mode != "knn":
            body = build_row_search(row, user_vector=vectors_for(row)[this_mode] if user else None,
                                    user_filters=user_filters,
                                    exclude_ids=seen, k=k, mode=this_mode, script_lang=script_lang,
                                    num_candidates_factor=row.num_candidates_factor or target.num_candidates_factor,
                                    fetch=hit_fields.request(_wants_vectors(row, user is not None)))
            placed.append(_own(lines, target, body, row, k, "popular" if user is None else this_mode, timeout,
                               user is not None, interest_of.get(row.id, 0)))
            continue
        plan = plan_row(row, user_filters, stats, thresholds) if stats is not None else _legacy_plan(row, user)
        if plan.shared and k > MAX_SHARED_HITS:
            plan = dataclasses.replace(plan, kind="filtered_graph" if plan.kind == "post_filter" else plan.kind,
                                       pre=plan.post, post=(), post_user_filters=False)
        if plan.shared:
            shared.setdefault(interest_of.get(row.id, 0), []).append((len(placed), row, plan, k, shown))
            placed.append(None)
            continue
        exact = plan.kind == "exact"
        body = build_row_search(row, user_vector=vectors_for(row)["knn"], user_filters=user_filters, exclude_ids=seen, k=k,
                                fetch=hit_fields.request(_wants_vectors(row, True)),
                                mode="knn", num_candidates_factor=row.num_candidates_factor or target.num_candidates_factor,
                                vector_field=plan.field, script_lang=script_lang, row_clauses=plan.pre,
                                rescore_oversample=0.0 if plan.field == EXACT_VECTOR_FIELD else target.rescore_oversample,
                                candidates=k + len(seen) if exact else
                                max(walk_candidates.get(f, thresholds.partition_candidates) for f in plan.fields)
                                if len(plan.fields) > 1 or plan.kind == "partition" else None)
        if len(plan.fields) > 1:   # a walk of each partition of a catalog made of them
            body["query"] = _scattered(body["query"], plan.fields)
        placed.append(_own(lines, target, body, row, k, plan.kind, timeout, True, interest_of.get(row.id, 0)))
    for interest, group in shared.items():
        slot = len(lines) // 2
        lines += [{"index": target.item_index, "request_cache": False},
                  _shared_body(group, vectors_for(group[0][1])["knn"], user_filters, seen, thresholds, timeout,
                               target.rescore_oversample, hit_fields, walk_candidates)]
        for position, row, plan, k, _ in group:
            placed[position] = RowSearch(row, plan.kind, slot, k, bucket=f"b{position}", interest=interest)
    searches = [dataclasses.replace(rs, category_field=category_field) for rs in placed if rs is not None]
    return PageSearch(lines, searches, hit_fields)


def _wants_vectors(row: Row, personalized: bool) -> bool:
    """A diverse row's similarity reads its candidates' vectors (a personalized row's)."""
    return bool(row.diversity and row.diversity.needs_vectors and personalized)


def _own(lines: list[dict], target, body: dict, row: Row, k: int, plan: str, timeout: str, personalized: bool,
         interest: int = 0) -> RowSearch:
    body["timeout"] = timeout
    body["track_total_hits"] = False
    slot = len(lines) // 2
    lines += [{"index": target.item_index}, body]
    return RowSearch(row, plan, slot, k, interest=interest)


def _shared_body(shared: list[tuple[int, Row, Plan, int, int]], vector: list[float], user_filters: Sequence[dict],
                 seen: list[str], thresholds: Thresholds, timeout: str, rescore_oversample: float = 0.0,
                 hit_fields: HitFields | None = None, walk_candidates: dict[str, int] | None = None) -> dict:
    """One search for every post-filtered row: each graph they need walked once, without a filter;
    the user filters and the seen items after the walks; a bucket per row with its best hits."""
    walks: dict[str, int] = {}
    for _, _, plan, _, shown in shared:
        # Enough walk results that the row's size pass its filters once the seen items are gone
        # (its bucket still holds k, for the backfill after de-duplication: the page's other walks
        # fill it too). Over-fetching every walk by the earlier rows' sizes as well cost a 1M
        # homepage ~40% more node CPU (docs/benchmarks.md).
        needed = walk_size(shown, len(seen), plan.share)
        for field in plan.fields:
            walks[field] = max(walks.get(field, 0), needed)
    knns = []
    for field, k_walk in walks.items():
        candidates = thresholds.walk_candidates if field == ITEM_VECTOR_FIELD else \
            (walk_candidates or {}).get(field, thresholds.partition_candidates)
        knn = {"field": field, "query_vector": vector, "k": k_walk,
               "num_candidates": min(max(candidates, k_walk), MAX_NUM_CANDIDATES)}
        if rescore_oversample:   # quantized graphs: the walk's best rescored with the float vectors
            knn["rescore_vector"] = {"oversample": rescore_oversample}
        knns.append({"knn": knn})
    hit_fields = hit_fields or HitFields.of(None, doc_values=False)
    # One filter aggregation per row, each keeping (and fetching) only as many hits as its row reads.
    buckets = {f"b{position}": {"filter": {"bool": {"filter": list(row.filter), "must_not": list(row.must_not)}},
                                "aggs": {"top": {"top_hits": {"size": k, **hit_fields.request(_wants_vectors(row, True))}}}}
               for position, row, _, k, _ in shared}
    query: dict[str, Any] = {"bool": {"must": [knns[0] if len(knns) == 1 else {"dis_max": {"queries": knns}}],
                                      "filter": list(user_filters)}}
    if seen:
        query["bool"]["must_not"] = [{"ids": {"values": seen}}]
    return {"size": 0, "track_total_hits": False, "timeout": timeout, "query": query, "aggs": buckets}


def is_shared_search(body: dict) -> bool:
    """Whether a line of the page's ``_msearch`` is its shared search (rows read from its buckets)."""
    return body.get("size") == 0 and bool(body.get("aggs"))


def _scattered(query: dict, fields: Sequence[str]) -> dict:
    """The same knn query on each of ``fields`` (a ``dis_max``: a document scores the same in every
    field, which all hold its one vector), wherever the query holds its knn clause."""
    def per_field(knn: dict) -> dict:
        return {"dis_max": {"queries": [{"knn": {**knn["knn"], "field": field}} for field in fields]}}
    if "knn" in query:
        return per_field(query)
    must = query["bool"]["must"]
    return {"bool": {**query["bool"], "must": [per_field(must[0]), *must[1:]]}}


def build_searches(rows: Sequence[Row], user, user_filters: Sequence[dict], target, mode: str | None = None,
                   sizes: dict[str, int] | None = None, script_lang: str = "painless",
                   stats: GenerationStats | None = None, schema: CatalogSchema | None = None,
                   interests: dict[str, int] | None = None) -> list[dict]:
    """The ``_msearch`` lines of a page (``build_page_search(...).lines``)."""
    return build_page_search(rows, user, user_filters, target, mode, sizes, script_lang, stats, schema,
                             interests).lines


__all__ = ["PageSearch", "RowSearch", "build_page_search", "build_searches", "query_vectors", "row_mode",
           "SEEN_OVERFETCH_MAX", "MAX_OVERFETCH"]
