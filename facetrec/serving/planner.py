"""The row planner: how each row of a page is searched, chosen per request from the row's estimated
matches under the request's user filters (``facetrec.catalog.counts``) and what the pair indexes.

Plans (``Plan.kind``; every row of a response names the one it ran):

* ``exact``: a knn search over the flat copy of the item vectors with the whole filter inside it:
  Elasticsearch scores every matching document, so the row is the exact top. Chosen for rows
  estimated at most ``FACETREC_EXACT_MAX_MATCHES`` matches (its cost grows with the matches).
* ``partition``: a walk of the vector partition of the value the row pins (``facetrec.catalog.partitions``),
  e.g. the audiobook graph for ``{term: {item_format: audiobook}}``, with the remaining filters
  (the user facets) applied after the walk when they keep a large share of the partition, inside
  it otherwise.
* ``post_filter``: a walk of the whole catalog's graph with no filter inside it, over-fetched by the
  row's estimated share and filtered after: an unfiltered walk is cheaper and finds more than a
  filtered one when the filter keeps a large share (measured: ``docs/benchmarks.md``).
* ``filtered_graph``: a walk of the whole catalog's graph with the filter inside it (Elasticsearch's
  filtered HNSW search): for rows too selective to post-filter and too large to scan.

Walks whose filters are applied after them are *shared*: every post-filtered row of a page (on the
whole graph or on a partition) is served from ONE search of the page's ``_msearch`` that walks each
needed graph once (a ``dis_max`` of the walks; every field holds the same vectors, so a document's
score is the same whichever walk found it), applies the user filters and the seen items after the
walks, and splits the result into rows with a ``filters`` aggregation (one bucket per row, its top
hits by score). Rows that walk the same graph share that walk; a row gains whatever the other walks
found that matches it. A row config can pin a plan (``plan:``); a plan the pair cannot run (no flat
copy, no partition for the value) falls back to the planner's choice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from facetrec.catalog.counts import GenerationStats
from facetrec.catalog.fields import ITEM_VECTOR_FIELD
from facetrec.catalog.rows import ROW_PLANS, Row
from facetrec.serving.row_queries import MAX_NUM_CANDIDATES
from facetrec.settings import Settings

PLANS = ROW_PLANS


_DEFAULTS = Settings()


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The planner's knobs (their defaults and meaning are ``facetrec.settings``'s)."""
    exact_max_matches: int = _DEFAULTS.exact_max_matches          # rows this small scan exactly
    post_filter_min_share: float = _DEFAULTS.post_filter_min_share  # filters keeping this share go after the walk
    walk_candidates: int = _DEFAULTS.walk_candidates              # num_candidates of a walk of the whole graph
    partition_candidates: int = _DEFAULTS.partition_candidates    # num_candidates of a partition walk

    @classmethod
    def from_settings(cls, settings: Settings) -> "Thresholds":
        return cls(exact_max_matches=settings.exact_max_matches, post_filter_min_share=settings.post_filter_min_share,
                   walk_candidates=settings.walk_candidates, partition_candidates=settings.partition_candidates)


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str                          # one of PLANS
    fields: tuple[str, ...]            # the vector field(s) searched (a walk of each; one, but for a
                                       # catalog made of partitions)
    pre: tuple[dict, ...] = ()         # row clauses inside the walk (with the user filters when not post)
    post: tuple[dict, ...] = ()        # row clauses after the walk
    post_user_filters: bool = False    # the user filters are applied after the walk (a shared walk)
    share: float | None = None         # estimated share of the walked field's documents the row keeps
    estimated_matches: int | None = None

    @property
    def shared(self) -> bool:
        return self.post_user_filters

    @property
    def field(self) -> str:
        return self.fields[0]


def pinned_value(row: Row, partitions: Mapping[str, Mapping[str, Any]]) -> tuple[int, str, str] | None:
    """(clause index, facet, value) of the first filter clause of ``row`` that pins one value of a
    partitioned facet (``term``, or ``terms`` with one value), or None."""
    for i, clause in enumerate(row.filter):
        (kind, body), = clause.items()
        if kind not in ("term", "terms"):
            continue
        (facet, value), = body.items()
        if kind == "terms":
            if len(value) != 1:
                continue
            value = value[0]
        if facet in partitions and str(value) in partitions[facet]:
            return i, facet, str(value)
    return None


def plan_row(row: Row, user_filters: Sequence[dict], stats: GenerationStats | None,
             thresholds: Thresholds) -> Plan:
    """The plan of one knn row (see the module doc). ``stats`` None: a pair the planner knows nothing
    of (it was made before the planner): every row walks the whole graph with its filter inside."""
    if stats is None:
        return Plan("filtered_graph", (ITEM_VECTOR_FIELD,), pre=row.filter)
    estimate = stats.estimate(row, user_filters)
    if stats.flat:   # no graph: every search of the generation scans its filtered set exactly
        return Plan("exact", (ITEM_VECTOR_FIELD,), pre=row.filter, estimated_matches=estimate)
    plans = _Plans(row, stats, thresholds, estimate)
    if row.plan is not None:   # pinned: that plan where the pair can run it, else the next best
        fallbacks = {"exact": (plans.exact, plans.partition), "partition": (plans.partition,),
                     "post_filter": (plans.post_filter,), "filtered_graph": ()}[row.plan]
        return next((p for p in (f() for f in fallbacks) if p is not None), None) or plans.filtered_graph()
    if estimate is not None and estimate <= thresholds.exact_max_matches:
        chosen = plans.exact()
        if chosen is not None:
            return chosen
    chosen = plans.partition()
    if chosen is not None:
        return chosen
    if plans.catalog_share is not None and plans.catalog_share >= thresholds.post_filter_min_share:
        return plans.post_filter()
    return plans.filtered_graph()


class _Plans:
    """Each plan a row could have on one generation (None: the pair cannot run it)."""

    def __init__(self, row: Row, stats: GenerationStats, thresholds: Thresholds, estimate: int | None):
        self.row, self.stats, self.thresholds, self.estimate = row, stats, thresholds, estimate
        self.pinned = pinned_value(row, stats.partitions)
        self.catalog = stats.catalog_fields()
        self.catalog_share = None if estimate is None else min(1.0, estimate / max(1, stats.docs))

    def exact(self) -> Plan | None:
        field = self.stats.exact_field
        return None if field is None else Plan("exact", (field,), pre=self.row.filter, estimated_matches=self.estimate)

    def partition(self) -> Plan | None:
        if self.pinned is None:
            return None
        i, facet, value = self.pinned
        entry = self.stats.partitions[facet][value]
        rest = tuple(c for j, c in enumerate(self.row.filter) if j != i)
        share = None if self.estimate is None else min(1.0, self.estimate / max(1, entry["docs"]))
        if share is not None and share >= self.thresholds.post_filter_min_share:
            return Plan("partition", (entry["field"],), post=rest, post_user_filters=True, share=share,
                        estimated_matches=self.estimate)
        return Plan("partition", (entry["field"],), pre=rest, share=share, estimated_matches=self.estimate)

    def post_filter(self) -> Plan | None:
        if self.estimate is None:
            return None
        return Plan("post_filter", self.catalog, post=self.row.filter, post_user_filters=True,
                    share=self.catalog_share, estimated_matches=self.estimate)

    def filtered_graph(self) -> Plan:
        return Plan("filtered_graph", self.catalog, pre=self.row.filter, share=self.catalog_share,
                    estimated_matches=self.estimate)


MIN_PARTITION_CANDIDATES = 100


def partition_candidates(partitions: Mapping[str, Mapping[str, Mapping[str, Any]]], largest: int) -> dict[str, int]:
    """num_candidates of each partition's walk: ``largest`` for the largest partition of its facet,
    scaled by the square root of a smaller one's size relative to it (a graph of fewer items reaches
    the same recall with fewer candidates: measured at 1M, docs/benchmarks.md). field -> candidates."""
    out = {}
    for values in partitions.values():
        biggest = max((entry["docs"] for entry in values.values()), default=0)
        for entry in values.values():
            scaled = largest * math.sqrt(entry["docs"] / biggest) if biggest else largest
            out[entry["field"]] = max(MIN_PARTITION_CANDIDATES, min(largest, math.ceil(scaled)))
    return out


def walk_size(shown: int, seen: int, share: float | None) -> int:
    """How many results an unfiltered walk returns so that ``shown`` of them pass a filter keeping
    ``share`` once the user's ``seen`` items are removed after it. A seen item displaces a result only
    when it passes the filter too, which it does at about the same ``share``: the walk needs
    ``shown`` + ``seen x share`` passing results (``overfetch``), not ``shown + seen`` (which walked
    up to 1/share times more than needed: docs/benchmarks.md, the page's walks)."""
    if share is None or share >= 1.0:
        return shown + seen
    return overfetch(shown + math.ceil(seen * max(share, 0.0)), share)


def overfetch(k: int, share: float | None) -> int:
    """How many walk results to take so that at least ``k`` pass a filter keeping ``share`` of them
    (a normal-approximation margin of 2.5 standard deviations, as Elasticsearch's own post-filter
    oversampling), at most Elasticsearch's candidate limit."""
    if share is None or share >= 1.0:
        return k
    share = max(share, 1e-4)
    return min(MAX_NUM_CANDIDATES, math.ceil((k + 2.5 * math.sqrt(k * (1.0 - share) / share)) / share))
