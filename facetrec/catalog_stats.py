"""What the row planner knows of one item generation: its size, its vector partitions, and how many
items each row matches, overall and per value of each user filter.

Counted once per generation with one size-0 search (a ``filters`` aggregation, one bucket per
row, with a ``terms`` aggregation per user-filter facet inside), at publish (recorded in the item
index's ``_meta`` as ``row_stats``) or, for rows the record lacks (the row config changed since),
by the service the first time it plans them. A row's matches under a request's user filters are
estimated from those counts (``GenerationStats.estimate``): the row's count times, for each user
filter, the share of the row's items that have the asked value(s).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Iterable, Mapping, Sequence

import logging

from elasticsearch import ApiError, Elasticsearch

from facetrec.rows import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD, Row, row_filter

log = logging.getLogger("facetrec.catalog_stats")
MAX_TERMS = 500          # values counted per user-filter facet (more are estimated as absent)


@dataclasses.dataclass(frozen=True)
class GenerationStats:
    """One item generation, as the planner sees it."""
    index: str                       # the concrete item index
    generation: str | None
    docs: int                        # items in the generation
    partitions: Mapping[str, Mapping[str, Mapping[str, Any]]]   # facet -> value -> {field, docs}
    exact_vectors: bool              # it indexes the flat copy exact plans scan
    rows: Mapping[str, Mapping[str, Any]]                       # row id -> {"filter", "docs", "by": {facet: {value: n}}}
    index_type: str | None = None    # how its item vectors are indexed (None: not recorded)
    covering: str | None = None      # the facet whose partitions hold every item (then no catalog graph)

    def estimate(self, row: Row, user_filters: Sequence[dict]) -> int | None:
        """The row's matches under these user filters (an estimate; None: the row was not counted,
        e.g. an ad-hoc row). Each user filter is a ``term`` or ``terms`` clause on one facet."""
        counted = self.rows.get(row.id)
        if counted is None or counted.get("filter") != _signature(row) or counted.get("docs") is None:
            return None
        docs = float(counted["docs"])
        if docs <= 0:
            return 0
        for clause in user_filters:
            (kind, body), = clause.items()
            (facet, value), = body.items()
            by = counted.get("by", {}).get(facet)
            if by is None:
                continue   # a facet not counted: no estimate of its share, assume it keeps everything
            values = value if kind == "terms" else [value]
            docs *= min(1.0, sum(by.get(str(v), 0) for v in values) / counted["docs"])
        return int(round(docs))

    @property
    def flat(self) -> bool:
        """Its item vectors are indexed flat: every knn search of it is an exact scan."""
        return self.index_type in ("flat", "int8_flat")

    @property
    def catalog_graph(self) -> bool:
        """Whether ``item_embed`` is a graph of the whole catalog (else: flat, and the catalog's
        graph is the union of the covering facet's partition graphs)."""
        return not self.flat and self.covering is None

    @property
    def exact_field(self) -> str | None:
        """The field an exact scan reads: the flat copy, or the item vector field itself when that
        is flat; None when the generation has neither."""
        if self.exact_vectors:
            return EXACT_VECTOR_FIELD
        return ITEM_VECTOR_FIELD if self.flat or self.covering else None

    def catalog_fields(self) -> tuple[str, ...]:
        """The graph fields that together hold the whole catalog: the catalog graph, or every
        partition of the covering facet."""
        if self.catalog_graph or not self.covering:
            return (ITEM_VECTOR_FIELD,)
        return tuple(entry["field"] for _, entry in sorted(self.partitions[self.covering].items()))


def _signature(row: Row) -> list:
    """What a row's count depends on (its filter and exclusions): a recorded count is only used for
    a row that still filters the same way."""
    return [list(row.filter), list(row.must_not)]


def count_rows(es: Elasticsearch, index: str, rows: Iterable[Row], user_filter_facets: Sequence[str],
               timeout_s: float = 30.0) -> dict[str, dict]:
    """Count each row's items in ``index``, overall and per value of each user-filter facet: one
    size-0 search. Returns row id -> {"filter", "docs", "by": {facet: {value: count}}}."""
    rows = list(rows)
    if not rows:
        return {}
    facet_aggs = {f"by_{i}": {"terms": {"field": facet, "size": MAX_TERMS}} for i, facet in enumerate(user_filter_facets)}
    body = {"size": 0, "track_total_hits": False, "aggs": {"rows": {
        "filters": {"filters": {f"r{i}": row_filter(row, []) for i, row in enumerate(rows)}},
        "aggs": facet_aggs}}}
    buckets = es.options(request_timeout=timeout_s).search(index=index, body=body)["aggregations"]["rows"]["buckets"]
    out = {}
    for i, row in enumerate(rows):
        bucket = buckets[f"r{i}"]
        out[row.id] = {"filter": _signature(row), "docs": int(bucket["doc_count"]),
                       "by": {facet: {str(b["key"]): int(b["doc_count"]) for b in bucket[f"by_{j}"]["buckets"]}
                              for j, facet in enumerate(user_filter_facets)}}
    return out


def from_meta(index: str, meta: Mapping[str, Any], docs: int) -> GenerationStats:
    recorded = meta.get("row_stats") or {}
    return GenerationStats(index=index, generation=meta.get("generation"), docs=int(recorded.get("docs", docs)),
                           partitions=meta.get("partitions") or {}, exact_vectors=bool(meta.get("exact_vectors")),
                           rows=dict(recorded.get("rows") or {}), index_type=meta.get("index_type"),
                           covering=meta.get("covering"))


class StatsCache:
    """The service's stats per item generation (one per process): read from the item index's
    ``_meta`` the first time a generation is asked, the configured rows it lacks (the row config
    changed since the publish) counted then; kept for the process's life (a validated generation
    never changes). Ad-hoc rows are never counted (one per request would cost a search each): the
    planner plans them without an estimate. The oldest generations are dropped beyond ``keep``."""

    def __init__(self, rows: Sequence[Row], user_filter_facets: Sequence[str], keep: int = 8):
        self.rows, self.user_filter_facets, self.keep = list(rows), tuple(user_filter_facets), keep
        self._by_generation: dict[str, GenerationStats] = {}
        self._lock = threading.Lock()

    def get(self, es: Elasticsearch, item_index: str, generation: str | None, timeout_s: float) -> GenerationStats:
        """The stats of ``generation`` (the one the user vector pairs with), read through
        ``item_index`` (an alias or a concrete index). If the alias names another generation by
        now, that one is returned: the page's hits will come from it, and the page is read again
        (``facetrec.homepage``) because it mixes generations."""
        cached = self._by_generation.get(generation) if generation else None
        if cached is not None:
            return cached
        loaded = self._load(es, item_index, timeout_s)
        missing = [row for row in self.rows
                   if row.id not in loaded.rows or loaded.rows[row.id].get("filter") != _signature(row)]
        if missing:
            loaded = dataclasses.replace(loaded, rows={**loaded.rows, **self._count(es, loaded.index, missing, timeout_s)})
        if loaded.generation is not None:
            with self._lock:
                self._by_generation[loaded.generation] = loaded
                while len(self._by_generation) > self.keep:
                    self._by_generation.pop(next(iter(self._by_generation)))
        return loaded

    def _count(self, es: Elasticsearch, index: str, rows: list[Row], timeout_s: float) -> dict[str, dict]:
        """Count the rows together; if Elasticsearch refuses that (a row whose filter cannot run, e.g.
        a facet declared with the wrong type), count them one by one and record the failures as
        uncounted (planned without an estimate; that row's own search reports its error)."""
        try:
            return count_rows(es, index, rows, self.user_filter_facets, timeout_s)
        except ApiError as exc:
            if exc.status_code in (429, 502, 503, 504):
                raise
        out = {}
        for row in rows:
            try:
                out.update(count_rows(es, index, [row], self.user_filter_facets, timeout_s))
            except ApiError as exc:
                if exc.status_code in (429, 502, 503, 504):
                    raise
                log.warning("row not counted", extra={"event": "row_stats_failed", "row": row.id,
                                                      "status": exc.status_code, "detail": str(exc)[:300]})
                out[row.id] = {"filter": _signature(row), "docs": None}
        return out

    @staticmethod
    def _load(es: Elasticsearch, item_index: str, timeout_s: float) -> GenerationStats:
        mappings = es.options(request_timeout=timeout_s).indices.get_mapping(index=item_index)
        index, body = next(iter(mappings.items()))
        meta = body.get("mappings", {}).get("_meta", {})
        docs = (meta.get("row_stats") or {}).get("docs")
        if docs is None:
            docs = es.options(request_timeout=timeout_s).count(index=index)["count"]
        return from_meta(index, meta, docs)
