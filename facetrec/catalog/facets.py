"""The live item generation as the service sees it: its catalog schema and the values it holds per facet.

What ``GET /v1/facets`` and ``GET /v1/rows`` list, what the HTML page offers in its filter selects,
what a request's filters and user filters are validated against (the schema the live generation was
made with, recorded in its ``_meta``: a rollback to a pair made with an older schema serves that
schema), and what the service checks a caller's keyword values against:

* a ``keyword`` or ``keyword_list`` facet lists its values (a terms aggregation, the MAX_FACET_VALUES
  most frequent, with their item counts, and ``complete`` saying whether that is all of them); a
  ``boolean`` facet its two values and their counts;
* a numeric or ``date`` facet gives its ``min`` and ``max`` (a range filter's useful bounds).

One mapping GET and (when first needed) one aggregation request per item generation: both are
cached under the concrete item index the alias names (a generation's schema and values change only
through item changes, re-read at most every VALUES_TTL_S), and the alias is re-read at most every
ALIAS_RECHECK_S seconds, so a swap is seen within that time.

Value matching (documented in the OpenAPI document): keyword values match **exactly and
case-sensitively** (Elasticsearch ``term`` on a ``keyword`` field). A value the generation does not
hold matches no item; but a value that differs from a held value only by case (``comedy`` where
the generation holds ``Comedy``) is refused with a 400 naming the field and the right spelling,
since it can only be a typo (``spelling_hint``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Mapping

from elasticsearch import Elasticsearch

from facetrec.catalog.meta import read_meta
from facetrec.catalog.rows import RowCatalog
from facetrec.catalog.schema import CatalogSchema
from facetrec.errors import BadRequest
from facetrec.es import alias_index

MAX_FACET_VALUES = 200     # values listed per keyword facet (the most frequent first)
ALIAS_RECHECK_S = 5.0      # how stale the cached generation may be after a swap
AGGREGATION_TIMEOUT_S = 10.0  # once per generation; a slow first read must not fail it
VALUES_TTL_S = 60.0          # item changes during the day add values: the summary is read again after this
DATE_AGG_FORMAT = "yyyy-MM-dd"
MATCHING = ("keyword values match exactly and case-sensitively; a value that differs from a listed value only "
            "by case is a 400 naming the field and the listed spelling")


LISTED = ("keyword", "keyword_list", "boolean")   # facets whose values are listed (the rest: min and max)


def facet_aggregations(facets: Mapping[str, str]) -> dict:
    """The ``aggs`` of the one summary request: terms per listed facet, min and max per other facet."""
    aggs: dict[str, Any] = {}
    for name, kind in facets.items():
        if kind in LISTED:
            aggs[f"values:{name}"] = {"terms": {"field": name, "size": MAX_FACET_VALUES,
                                                "order": [{"_count": "desc"}, {"_key": "asc"}]}}
        else:
            extra = {"format": DATE_AGG_FORMAT} if kind == "date" else {}
            aggs[f"min:{name}"] = {"min": {"field": name, **extra}}
            aggs[f"max:{name}"] = {"max": {"field": name, **extra}}
    return aggs


def parse_facet_aggregations(catalog: RowCatalog, aggregations: Mapping[str, Any]) -> dict[str, dict]:
    """Facet name -> what the generation holds (see the module docstring), in declaration order."""
    out: dict[str, dict] = {}
    for name, kind in catalog.facets.items():
        entry: dict[str, Any] = {"type": kind, "user_filter": name in catalog.user_filters}
        if kind in LISTED:
            agg = aggregations.get(f"values:{name}") or {}
            entry["values"] = [{"value": _value(b, kind), "count": int(b["doc_count"])} for b in agg.get("buckets", [])]
            entry["complete"] = int(agg.get("sum_other_doc_count", 0)) == 0
        else:
            entry["min"] = _bound(aggregations.get(f"min:{name}"), kind)
            entry["max"] = _bound(aggregations.get(f"max:{name}"), kind)
        out[name] = entry
    return out


def _value(bucket: Mapping[str, Any], kind: str) -> Any:
    if kind == "boolean":   # Elasticsearch keys a boolean 1/0, with "true"/"false" as key_as_string
        return bucket.get("key_as_string") == "true" if "key_as_string" in bucket else bool(bucket["key"])
    return str(bucket["key"])


def _bound(agg: Mapping[str, Any] | None, kind: str) -> Any:
    if not agg or agg.get("value") is None:
        return None   # no item has the field
    if kind == "date":
        return agg.get("value_as_string")
    return int(agg["value"]) if kind == "integer" else float(agg["value"])


def summarize(es: Elasticsearch, item_index: str, catalog: RowCatalog,
              timeout_s: float = AGGREGATION_TIMEOUT_S) -> dict[str, dict]:
    """Read the facet summary of one item index (one ``size: 0`` search)."""
    response = es.options(request_timeout=timeout_s).search(index=item_index, size=0,
                                                            aggs=facet_aggregations(catalog.facets))
    return parse_facet_aggregations(catalog, response.get("aggregations") or {})


@dataclasses.dataclass(frozen=True)
class FacetSummary:
    item_index: str | None       # the concrete item generation read (None: the alias does not exist)
    facets: dict[str, dict]

    def known_values(self, name: str) -> list[str] | None:
        """The listed values of a keyword facet when they are ALL its values (else None)."""
        entry = self.facets.get(name)
        if not entry or entry["type"] not in ("keyword", "keyword_list") or not entry["complete"]:
            return None
        return [v["value"] for v in entry["values"]]


def spelling_hint(value: str, known: list[str] | None) -> str | None:
    """The listed spelling of ``value`` when it is not listed but differs from a listed value only by
    case (None otherwise: listed, or unknown, or the list is not complete)."""
    if known is None or value in known:
        return None
    folded = value.casefold()
    return next((k for k in known if k.casefold() == folded), None)


def check_spelling(name: str, value: str, summary: FacetSummary | None, where: str) -> None:
    """Raise BadRequest naming ``where`` when ``value`` is a case variant of a listed value of ``name``."""
    if summary is None:
        return
    hint = spelling_hint(value, summary.known_values(name))
    if hint is not None:
        raise BadRequest(where, f"no item has {name} {value!r}; values match exactly and case-sensitively: "
                                f"did you mean {hint!r}?")


class LiveGeneration:
    """One item generation as served: its catalog (the configured rows over the schema it was made
    with) and, read when first asked, the values it holds per facet."""

    def __init__(self, es: Elasticsearch, item_index: str | None, catalog: RowCatalog,
                 clock: Callable[[], float] = time.monotonic):
        self.es, self.item_index, self.catalog, self.clock = es, item_index, catalog, clock
        self._summary: FacetSummary | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def schema(self) -> CatalogSchema | None:
        return self.catalog.schema

    def summary(self) -> FacetSummary:
        """The facet values (one aggregation, re-read after VALUES_TTL_S). Elasticsearch errors propagate."""
        with self._lock:
            if self._summary is not None and self.clock() - self._read_at < VALUES_TTL_S:
                return self._summary
        if self.item_index is None:
            summary = FacetSummary(None, parse_facet_aggregations(self.catalog, {}))
        else:
            summary = FacetSummary(self.item_index, summarize(self.es, self.item_index, self.catalog))
        with self._lock:
            self._summary, self._read_at = summary, self.clock()
        return summary


class FacetCache:
    """The live item generation (``LiveGeneration``): its schema read from its ``_meta`` once, its
    values when first asked; the alias re-read at most every ``recheck_s`` (thread-safe). A
    generation made before schemas were recorded is served with the configured schema."""

    def __init__(self, es: Elasticsearch, item_alias: str, catalog: RowCatalog,
                 recheck_s: float = ALIAS_RECHECK_S, clock: Callable[[], float] = time.monotonic):
        self.es, self.item_alias, self.catalog = es, item_alias, catalog
        self.recheck_s, self.clock = recheck_s, clock
        self._lock = threading.Lock()
        self._index: str | None = None
        self._checked_at = float("-inf")
        self._live: LiveGeneration | None = None

    def generation(self) -> LiveGeneration:
        """The live generation. Elasticsearch errors propagate (the caller decides)."""
        now = self.clock()
        with self._lock:
            index, fresh, live = self._index, now - self._checked_at < self.recheck_s, self._live
        if not fresh:
            index = alias_index(self.es, self.item_alias)
            with self._lock:
                self._index, self._checked_at = index, now
        if live is not None and live.item_index == index:
            return live
        live = LiveGeneration(self.es, index, self.catalog_of(index), self.clock)
        with self._lock:
            self._live = live   # only the live generation's is kept
        return live

    def catalog_of(self, index: str | None) -> RowCatalog:
        """The configured rows over the schema ``index`` records (the configured one when none)."""
        if index is None:
            return self.catalog
        schema = read_meta(self.es, index).catalog_schema
        return self.catalog.with_schema(schema) if schema is not None else self.catalog

    def get(self) -> FacetSummary:
        """The live generation's facet values."""
        return self.generation().summary()
