"""What the row planner knows of one item generation: its size, its vector partitions, and how many
items each row matches, overall and per value of each user filter.

Counted once per generation with one size-0 search (a ``filters`` aggregation, one bucket per
row, with a ``terms`` aggregation per user-filter facet inside), at publish (recorded in the item
index's ``_meta`` as ``row_stats``) or, for rows the record lacks (the row config changed since),
by the service in the background the first time it plans them (``StatsCache``). A row's matches under a request's user filters are
estimated from those counts (``GenerationStats.estimate``): the row's count times, for each user
filter, the share of the row's items that have the asked value(s).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

from elasticsearch import ApiError, Elasticsearch

from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.meta import GenerationMeta, read_meta
from facetrec.catalog.rows import Row, row_filter
from facetrec.catalog.schema import CatalogSchema
from facetrec.es import UNAVAILABLE_STATUSES

log = logging.getLogger("facetrec.catalog.counts")
MAX_TERMS = 500          # values counted per user-filter facet (more are estimated as absent)
CENTROID_SAMPLE = 1000   # items (a seeded random sample of the row's) whose mean vector is the row's centroid
COUNT_TIMEOUT_S = 30.0   # a background count of a generation's rows (a size-0 aggregation of the catalog)
RECOUNT_AFTER_S = 30.0   # a failed count is tried again on a page this long after
CHANGES_CHECK_S = 60.0   # how often a generation's item count is compared with its counted one (item changes)


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
    schema: CatalogSchema | None = None   # the catalog schema it was made with (None: not recorded)
    display_doc_values: bool = False  # its displayed fields are read from doc values (facetrec.serving.hit_fields)

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
            by = (counted.get("by") or {}).get(facet)
            if by is None:
                return None   # a facet not counted (the user filters changed since): no estimate
            values = value if kind == "terms" else [value]
            docs *= min(1.0, sum(by.get(str(v), 0) for v in values) / counted["docs"])
        return int(round(docs))

    def centroid(self, row: Row) -> list[float] | None:
        """The mean vector of a sample of the row's items (the direction a multi-interest user's
        interests are compared with: ``facetrec.serving.interests``); None when not recorded."""
        counted = self.rows.get(row.id)
        if counted is None or counted.get("filter") != _signature(row):
            return None
        return counted.get("centroid")

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
    """Count each row's items in ``index``, overall and per value of each user-filter facet (one size-0
    search), and take each row's centroid (``row_centroids``). Returns row id -> {"filter", "docs",
    "by": {facet: {value: count}}, "centroid"}."""
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
    for row_id, centroid in row_centroids(es, index, rows, timeout_s).items():
        out[row_id]["centroid"] = centroid
    return out


def row_centroids(es: Elasticsearch, index: str, rows: Sequence[Row], timeout_s: float = 30.0,
                  sample: int = CENTROID_SAMPLE) -> dict[str, list[float]]:
    """Each row's centroid: the mean item vector of a seeded random sample of its items (one
    ``_msearch``, a search per row), in the user vectors' space (a generation stored reduced,
    ``facetrec.serving.mips``, drops the reduction's last coordinate: the direction is what matters).
    Rows matching nothing get none."""
    meta = read_meta(es, index)
    lines: list[dict] = []
    for row in rows:
        lines += [{"index": index}, {
            "size": sample, "track_total_hits": False,
            "_source": {"includes": [ITEM_VECTOR_FIELD], "exclude_vectors": False},
            "query": {"function_score": {"query": row_filter(row, []), "random_score": {"seed": 7, "field": "_seq_no"},
                                         "boost_mode": "replace"}}}]
    if not lines:
        return {}
    responses = es.options(request_timeout=timeout_s).msearch(searches=lines)["responses"]
    out = {}
    for row, response in zip(rows, responses):
        vectors = [hit["_source"][ITEM_VECTOR_FIELD] for hit in response.get("hits", {}).get("hits", [])
                   if ITEM_VECTOR_FIELD in hit.get("_source", {})]
        if not vectors:
            continue
        mean = [sum(column) / len(vectors) for column in zip(*vectors)]
        out[row.id] = mean[:-1] if meta.item_vector_scale is not None else mean
    return out


def from_meta(meta: GenerationMeta, docs: int) -> GenerationStats:
    recorded = meta.row_stats
    return GenerationStats(index=meta.index, generation=meta.generation, docs=int(recorded.get("docs", docs)),
                           partitions=meta.partitions, exact_vectors=meta.exact_vectors,
                           rows=dict(recorded.get("rows") or {}), index_type=meta.index_type, covering=meta.covering,
                           schema=meta.catalog_schema, display_doc_values=meta.display_doc_values)


class StatsCache:
    """The service's stats per item generation (one per process): read from the item index's
    ``_meta`` the first time a generation is asked (one mapping GET, the request's timeout); kept for
    the process's life (a validated generation never changes). The configured rows the record lacks
    (the row config changed since the publish, or a pair published before row counts) are counted
    in the background, once per generation however many threads ask, with their own timeout; until
    then, and for a while after a count failed, those rows are planned without an estimate. Ad-hoc
    rows are never counted (one per request would cost a search each). The oldest generations are
    dropped beyond ``keep``."""

    def __init__(self, rows: Sequence[Row], user_filter_facets: Sequence[str], keep: int = 8,
                 count_timeout_s: float = COUNT_TIMEOUT_S, recount_after_s: float = RECOUNT_AFTER_S,
                 changes_check_s: float = CHANGES_CHECK_S):
        self.rows, self.user_filter_facets, self.keep = list(rows), tuple(user_filter_facets), keep
        self.count_timeout_s, self.recount_after_s = count_timeout_s, recount_after_s
        self.changes_check_s = changes_check_s
        self._checked: dict[str, float] = {}   # generation -> when its item count was last compared
        self._by_generation: dict[str, GenerationStats] = {}
        self._counting: dict[str, tuple[float, threading.Thread]] = {}   # generation -> (started, its count)
        self._complete: set[str] = set()   # generations with every configured row counted: nothing to check
        self._lock = threading.Lock()

    def get(self, es: Elasticsearch, item_index: str, generation: str | None, timeout_s: float) -> GenerationStats | None:
        """The stats of ``generation`` (the one the user vector pairs with), read through
        ``item_index`` (an alias or a concrete index). If the alias names another generation by
        now, that one is returned: the page's hits will come from it, and the page is read again
        (``facetrec.serving.homepage``) because it mixes generations. None when the item index cannot be
        read (missing, or no privilege to read its mapping): the rows are planned without stats and
        their own searches report the error. Timeouts and an overloaded or unreachable cluster raise."""
        stats = self._by_generation.get(generation) if generation else None
        if stats is not None and generation in self._complete:
            if time.monotonic() - self._checked.get(generation, 0.0) >= self.changes_check_s:
                self._checked[generation] = time.monotonic()
                self._start(f"row-recount-{generation}", self._recount_if_changed, es, generation, stats.index)
            return stats
        if stats is None:
            try:
                stats = self._load(es, item_index, timeout_s)
            except ApiError as exc:
                if exc.status_code in UNAVAILABLE_STATUSES:
                    raise
                log.warning("item generation's stats not read", extra={
                    "event": "row_stats_unreadable", "index": item_index, "status": exc.status_code,
                    "detail": str(exc)[:300]})
                return None
            if stats.generation is not None:
                with self._lock:
                    stats = self._by_generation.setdefault(stats.generation, stats)
                    while len(self._by_generation) > self.keep:
                        self._complete.discard(self._by_generation.pop(next(iter(self._by_generation))).generation)
        if stats.generation is not None:
            if self.uncounted(stats):
                self._count_later(es, stats.generation, stats.index)
            else:
                self._complete.add(stats.generation)
        return stats

    def uncounted(self, stats: GenerationStats) -> list[Row]:
        """The configured rows whose count the stats lack or hold for another filter, or without a
        user-filter facet that is configured now."""
        out = []
        for row in self.rows:
            counted = stats.rows.get(row.id)
            if (counted is None or counted.get("filter") != _signature(row)
                    or (counted.get("docs") is not None
                        and not set(self.user_filter_facets) <= set(counted.get("by") or {}))):
                out.append(row)
        return out

    def settle(self, timeout_s: float = 60.0) -> None:
        """Wait for the background counts under way (tests, and a worker warming up)."""
        for _, thread in list(self._counting.values()):
            thread.join(timeout_s)

    def _count_later(self, es: Elasticsearch, generation: str, index: str) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._counting.get(generation)
            if started is not None and (started[1].is_alive() or now - started[0] < self.recount_after_s):
                return   # under way, or failed a moment ago
            thread = threading.Thread(target=self._count_generation, args=(es, generation, index),
                                      name=f"row-stats-{generation}", daemon=True)
            self._counting[generation] = (now, thread)
        thread.start()

    @staticmethod
    def _start(name: str, target, *args) -> None:
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    def _recount_if_changed(self, es: Elasticsearch, generation: str, index: str) -> None:
        """Item changes during the day (``facetrec.items``) add and remove items: when the
        generation's item count moved, every configured row is counted again (in the background)."""
        try:
            docs = es.options(request_timeout=self.count_timeout_s).count(index=index)["count"]
            stats = self._by_generation.get(generation)
            if stats is None or docs == stats.docs:
                return
            counted = self._count(es, index, list(self.rows), self.count_timeout_s)
        except Exception as exc:   # noqa: BLE001 - a background count must never take a worker down
            log.warning("rows not counted again after item changes", extra={
                "event": "row_stats_failed", "index": index, "detail": str(exc)[:300]})
            return
        with self._lock:
            current = self._by_generation.get(generation)
            if current is not None:
                self._by_generation[generation] = dataclasses.replace(current, docs=docs,
                                                                      rows={**current.rows, **counted})

    def _count_generation(self, es: Elasticsearch, generation: str, index: str) -> None:
        stats = self._by_generation.get(generation)
        if stats is None:
            return
        try:
            counted = self._count(es, index, self.uncounted(stats), self.count_timeout_s)
        except Exception as exc:   # noqa: BLE001 - a background count must never take a worker down
            log.warning("rows not counted; planned without an estimate for now", extra={
                "event": "row_stats_failed", "index": index, "detail": str(exc)[:300]})
            return
        with self._lock:
            current = self._by_generation.get(generation)
            if current is not None:
                self._by_generation[generation] = dataclasses.replace(current, rows={**current.rows, **counted})
            self._counting.pop(generation, None)

    def _count(self, es: Elasticsearch, index: str, rows: list[Row], timeout_s: float) -> dict[str, dict]:
        """Count the rows together; if Elasticsearch refuses that (a row whose filter cannot run, e.g.
        a facet declared with the wrong type), count them one by one and record the failures as
        uncounted (planned without an estimate; that row's own search reports its error)."""
        try:
            return count_rows(es, index, rows, self.user_filter_facets, timeout_s)
        except ApiError as exc:
            if exc.status_code in UNAVAILABLE_STATUSES:
                raise
        out = {}
        for row in rows:
            try:
                out.update(count_rows(es, index, [row], self.user_filter_facets, timeout_s))
            except ApiError as exc:
                if exc.status_code in UNAVAILABLE_STATUSES:
                    raise
                log.warning("row not counted", extra={"event": "row_stats_failed", "row": row.id,
                                                      "status": exc.status_code, "detail": str(exc)[:300]})
                out[row.id] = {"filter": _signature(row), "docs": None}
        return out

    @staticmethod
    def _load(es: Elasticsearch, item_index: str, timeout_s: float) -> GenerationStats:
        meta = read_meta(es.options(request_timeout=timeout_s), item_index)
        docs = meta.row_stats.get("docs")
        if docs is None:
            docs = es.options(request_timeout=timeout_s).count(index=meta.index)["count"]
        return from_meta(meta, docs)
