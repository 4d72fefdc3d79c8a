"""Parse and validate homepage requests into what `facetrec.serving.homepage.recommend` takes.

Pure functions: every problem raises `BadRequest(field, message)`, which the service turns into
HTTP 400 with a JSON body naming the field. Values only ever become term values or range bounds.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime
from typing import Any, Callable, Mapping

from facetrec.catalog.facets import FacetSummary, check_spelling
from facetrec.catalog.rows import MAX_PAGE_HITS, MAX_ROW_SIZE, Row, RowCatalog, check_value, validate_clause
from facetrec.errors import BadRequest
from facetrec.events.batch import (
    EPOCH_UNITS,
    MAX_EVENTS_PER_BATCH,
    MIN_UNITLESS_EPOCH_MS,
    Event,
    EventBatch,
    check_item_id,
    check_user_id,
    parse_event_time,
)
from facetrec.experiments import ExperimentError, check_arm_name
from facetrec.settings import RETRIEVAL_MODES

MAX_ROWS = 20
AD_HOC_SIZE = 10          # an ad-hoc row's size when it names none
QUERY_PARAMS = {"rows", "size", "mode", "arm"}
MAX_SAMPLE_USERS = 100
CONFIGURED_ROW_FIELDS = ("id", "size", "ad_hoc")   # ad_hoc: false, or left out
AD_HOC_ROW_FIELDS = ("id", "ad_hoc", "title", "size", "filter", "must_not")
# The live facet values, asked for only when a request holds a keyword value to check (facetrec.catalog.facets).
FacetValues = Callable[[], "FacetSummary | None"]


def query_args(args: Any, allowed: set[str] | frozenset[str]) -> dict[str, str]:
    """A request's query parameters, each given at most once and each among ``allowed``, as a dict.
    ``args`` is a MultiDict (Flask's ``request.args``) or a plain mapping of str -> str | list[str]."""
    names = list(args.keys())
    out: dict[str, str] = {}
    for name in names:
        values = args.getlist(name) if hasattr(args, "getlist") else \
            (args[name] if isinstance(args[name], list) else [args[name]])
        if name not in allowed:
            raise BadRequest(name[:64], f"unknown parameter; allowed: {sorted(allowed)}")
        if len(values) != 1:
            raise BadRequest(name, f"given {len(values)} times; give it once"
                                   + (" (a comma-separated list of row ids)" if name == "rows" else ""))
        out[name] = values[0]
    return out


def parse_limit(args: Any, default: int = 20) -> int:
    """GET /v1/sample-users?limit=: an integer in 1..MAX_SAMPLE_USERS."""
    raw = query_args(args, {"limit"}).get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_SAMPLE_USERS:
        raise BadRequest("limit", f"must be an integer in 1..{MAX_SAMPLE_USERS}")
    return int(raw)


@dataclasses.dataclass(frozen=True)
class HomepageQuery:
    user_id: str
    rows: list[Row]
    user_filters: list[dict]
    sizes: dict[str, int]
    mode: str | None
    arm: str | None = None     # an experiment arm pinned by the caller (debugging); None: the user's own


def _arm(raw: Any) -> str | None:
    """A pinned arm's name (whether it is live is the view's to say: it knows the experiment)."""
    if raw is None:
        return None
    try:
        return check_arm_name(raw)
    except ExperimentError as exc:
        raise BadRequest("arm", str(exc)) from None


def _size(raw: Any, field: str, text: bool = False) -> int:
    """A row size: a JSON integer, or (``text``: a query parameter) its decimal digits."""
    if text and isinstance(raw, str) and raw.isascii() and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ROW_SIZE:
        raise BadRequest(field, f"must be an integer in 1..{MAX_ROW_SIZE}" + ("" if text else " (a JSON number)"))
    return raw


def _mode(raw: Any) -> str | None:
    if raw is None:
        return None
    if raw not in RETRIEVAL_MODES:
        raise BadRequest("mode", f"must be one of {list(RETRIEVAL_MODES)}")
    return raw


class _Once:
    """The facet values, read at most once per request and only if a keyword value needs them."""

    def __init__(self, facets: FacetValues | None):
        self.facets, self.read, self.summary = facets, False, None

    def __call__(self) -> FacetSummary | None:
        if not self.read:
            self.read, self.summary = True, self.facets() if self.facets else None
        return self.summary


def _spelled(clause: dict, catalog: RowCatalog, prefix: str, summary: _Once) -> dict:
    """``clause`` (validated) once its keyword values passed the case rule (``facetrec.catalog.facets``); a
    refusal names ``<prefix>.<facet>``."""
    (kind, body), = clause.items()
    (name, value), = body.items()
    if kind in ("term", "terms") and catalog.facets.get(name) in ("keyword", "keyword_list"):
        for v in value if isinstance(value, list) else [value]:
            check_spelling(name, v, summary(), f"{prefix}.{name}")
    return clause


def user_filter_clauses(filters: Mapping[str, Any], catalog: RowCatalog, field: str,
                        facets: FacetValues | None = None, text: bool = False) -> list[dict]:
    """The clauses of a request's user filters, each named by its request parameter (the catalog
    schema's ``user_filter``); ``text``: the values are query parameters (strings)."""
    clauses = []
    summary = facets if isinstance(facets, _Once) else _Once(facets)
    params = catalog.user_filter_params
    for param, value in filters.items():
        where = f"{field}.{param}"
        name = params.get(param)
        if name is None:
            raise BadRequest(where, f"not a user filter; allowed: {sorted(params)}")
        kind = catalog.facets[name]
        if text:
            value = _from_text(value, kind)
        if isinstance(value, list):
            if not 1 <= len(value) <= 50:
                raise BadRequest(where, "a list of 1..50 values")
            clause = {"terms": {name: [check_value(v, kind, where) for v in value]}}
        else:
            clause = {"term": {name: check_value(value, kind, where)}}
        clauses.append(_spelled(clause, catalog, field, summary))
    return clauses


def _from_text(value: str, kind: str) -> Any:
    """A query parameter's value as the facet's type (left as it is when it does not parse: the check
    that follows names the field)."""
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    if kind == "integer" and value.lstrip("-").isascii() and value.lstrip("-").isdigit():
        return int(value)
    return value


def parse_homepage_args(user_id: str, args: Any, catalog: RowCatalog, default_mode: str = "knn",
                        facets: FacetValues | None = None) -> HomepageQuery:
    """GET /v1/users/<user_id>/homepage?<user filter>=&rows=&size=&mode= (``args``: see ``query_args``)"""
    user_id = check_user_id(user_id)
    args = query_args(args, QUERY_PARAMS | set(catalog.user_filter_params))
    rows = catalog.homepage_rows()
    if "rows" in args:
        ids = [r for r in args["rows"].split(",") if r]
        if not ids or len(ids) > MAX_ROWS:
            raise BadRequest("rows", f"a comma-separated list of 1..{MAX_ROWS} row ids")
        for row_id in ids:
            if row_id not in catalog.rows:
                raise BadRequest("rows", f"unknown row id {row_id[:64]!r}; known: {sorted(catalog.rows)}")
        rows = [catalog.rows[r] for r in dict.fromkeys(ids)]
    sizes = {r.id: _size(args["size"], "size", text=True) for r in rows} if "size" in args else {}
    filters = {k: v for k, v in args.items() if k in catalog.user_filter_params}
    return _checked(HomepageQuery(user_id, rows, user_filter_clauses(filters, catalog, "filters", facets, text=True), sizes,
                                  _mode(args.get("mode")), _arm(args.get("arm"))), catalog, default_mode, "size", "mode")


def parse_rows_body(user_id: str, body: Any, catalog: RowCatalog, default_mode: str = "knn",
                    facets: FacetValues | None = None) -> HomepageQuery:
    """POST /v1/users/<user_id>/rows with {"rows": [...], "filters": {...}, "mode": ...}.

    A row is a configured row id, ``{"id": ..., "size": n}`` (a configured row at another size), or
    an ad-hoc row ``{"id", "ad_hoc": true, "title", "size", "filter": [...], "must_not": [...]}``
    over the declared facets, whose id must not be a configured row's.
    """
    user_id = check_user_id(user_id)
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = set(body) - {"rows", "filters", "mode", "arm"}
    if unknown:
        raise BadRequest(sorted(unknown)[0], "unknown field; allowed: rows, filters, mode, arm")
    raw_rows = body.get("rows")
    if raw_rows is None:
        raw_rows = list(catalog.homepage)
    if not isinstance(raw_rows, list) or not 1 <= len(raw_rows) <= MAX_ROWS:
        raise BadRequest("rows", f"must be a list of 1..{MAX_ROWS} rows")
    rows, sizes = [], {}
    summary = _Once(facets)
    for i, entry in enumerate(raw_rows):
        row, size = _row_entry(entry, catalog, f"rows[{i}]", summary)
        if any(r.id == row.id for r in rows):
            raise BadRequest(f"rows[{i}].id", "duplicate row id")
        rows.append(row)
        if size is not None:
            sizes[row.id] = size
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise BadRequest("filters", "must be an object of user filters")
    return _checked(HomepageQuery(user_id, rows, user_filter_clauses(filters, catalog, "filters", summary), sizes,
                                  _mode(body.get("mode")), _arm(body.get("arm"))), catalog, default_mode, "rows", "mode")


def _checked(query: HomepageQuery, catalog: RowCatalog, default_mode: str, size_field: str,
             mode_field: str) -> HomepageQuery:
    """What a caller may ask of each row is set in the row config, not by the caller: a mode other
    than the row's own only if the row lists it in ``caller_modes``; a size up to its ``max_size``
    (default twice its size); and at most MAX_PAGE_HITS items over the whole page."""
    total = 0
    for row in query.rows:
        size = query.sizes.get(row.id, row.size)
        configured = catalog.rows.get(row.id) is row
        if configured and size > row.size_limit:
            raise BadRequest(size_field, f"row {row.id!r} allows at most {row.size_limit} items")
        own = row.retrieval or default_mode
        if query.mode is not None and query.mode != own and query.mode not in row.caller_modes:
            if not configured:
                raise BadRequest(mode_field, f"ad-hoc row {row.id!r} is served with the service's retrieval mode "
                                             f"{own!r} only; mode {query.mode!r} is for configured rows that list "
                                             "it (GET /v1/rows: modes)")
            raise BadRequest(mode_field, f"row {row.id!r} does not allow mode {query.mode!r}; its config "
                                         f"allows {sorted({own, *row.caller_modes})} (GET /v1/rows: modes)")
        total += size
    if total > MAX_PAGE_HITS:
        raise BadRequest(size_field, f"the rows ask for {total} items; at most {MAX_PAGE_HITS} per request")
    return query


def _row_entry(entry: Any, catalog: RowCatalog, field: str, summary: _Once) -> tuple[Row, int | None]:
    if isinstance(entry, str):
        if entry not in catalog.rows:
            raise BadRequest(field, f"unknown row id {entry[:64]!r}; known: {sorted(catalog.rows)}")
        return catalog.rows[entry], None
    if not isinstance(entry, dict):
        raise BadRequest(field, 'a configured row id, {"id", "size"}, or an ad-hoc row {"id", "ad_hoc": true, ...}')
    ad_hoc = entry.get("ad_hoc", False)
    if not isinstance(ad_hoc, bool):
        raise BadRequest(f"{field}.ad_hoc", "true (an ad-hoc row) or false (a configured row)")
    allowed = AD_HOC_ROW_FIELDS if ad_hoc else CONFIGURED_ROW_FIELDS
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        if not ad_hoc and unknown[0] in AD_HOC_ROW_FIELDS:
            raise BadRequest(f"{field}.{unknown[0]}", 'a configured row takes only id and size; a row with its own '
                                                      f'{unknown[0]} is an ad-hoc row: add "ad_hoc": true')
        raise BadRequest(f"{field}.{unknown[0][:64]}", f"unknown row field; allowed: {list(allowed)}")
    row_id = entry.get("id")
    if not isinstance(row_id, str) or not row_id or len(row_id) > 64:
        raise BadRequest(f"{field}.id", "a string of 1..64 characters")
    size = _size(entry["size"], f"{field}.size") if "size" in entry else None
    if not ad_hoc:
        if row_id not in catalog.rows:
            raise BadRequest(f"{field}.id", f'unknown row id {row_id!r}; known: {sorted(catalog.rows)} (a row of '
                                            'your own needs "ad_hoc": true)')
        return catalog.rows[row_id], size
    if row_id in catalog.rows:
        raise BadRequest(f"{field}.id", f"{row_id!r} is a configured row; an ad-hoc row needs an id of its own "
                                        '(or leave out "ad_hoc" to ask for the configured row)')
    clauses = {}
    for key in ("filter", "must_not"):
        value = entry.get(key) or []
        if not isinstance(value, list) or len(value) > 20:
            raise BadRequest(f"{field}.{key}", "a list of at most 20 filters")
        clauses[key] = tuple(_spelled(validate_clause(c, catalog.facets, f"{field}.{key}"), catalog,
                                      f"{field}.{key}", summary) for c in value)
    title = entry.get("title", row_id)
    if not isinstance(title, str) or len(title) > 200:
        raise BadRequest(f"{field}.title", "a string of at most 200 characters")
    return Row(id=row_id, title=title, size=size or AD_HOC_SIZE, filter=clauses["filter"], must_not=clauses["must_not"]), size


MAX_BATCH_ID = 64


def parse_events_body(user_id: str, body: Any, now: datetime) -> EventBatch:
    """POST /v1/users/<user_id>/events with {"events": [{"item_id", "ts"}, ...], "batch_id": ..., "ts_unit": ...}.

    ``batch_id`` (optional, recommended) makes a retried request harmless: a batch id the user's
    document already holds is not applied again (and one reused with other events is a 409).
    Without one, the service makes one up. ``ts`` is an ISO 8601 time with a zone or an epoch
    number: milliseconds by default (refused below 1e11, where seconds are likelier), or in the
    unit ``ts_unit`` ("ms" or "s") says."""
    user_id = check_user_id(user_id)
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = set(body) - {"events", "batch_id", "ts_unit"}
    if unknown:
        raise BadRequest(sorted(unknown)[0][:64], "unknown field; allowed: events, batch_id, ts_unit")
    unit = body.get("ts_unit")
    if unit is not None and unit not in EPOCH_UNITS:
        raise BadRequest("ts_unit", f"the unit of numeric event times: one of {list(EPOCH_UNITS)}")
    events = body.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise BadRequest("events", f"must be a list of 1..{MAX_EVENTS_PER_BATCH} events")
    parsed = []
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, dict):
            raise BadRequest(where, 'an object {"item_id": string, "ts": ISO 8601 time with a zone or epoch ms}')
        unknown = sorted(set(event) - {"item_id", "ts"})
        if unknown:
            raise BadRequest(f"{where}.{unknown[0][:64]}", "unknown event field; allowed: item_id, ts")
        for required in ("item_id", "ts"):
            if required not in event:
                raise BadRequest(f"{where}.{required}", "required")
        item_id = check_item_id(event["item_id"], f"{where}.item_id")
        try:
            at = parse_event_time(event["ts"], now, unit=unit)
        except ValueError as exc:
            ts = event["ts"]
            unitless_small = unit is None and isinstance(ts, (int, float)) and not isinstance(ts, bool) \
                and 0 <= ts < MIN_UNITLESS_EPOCH_MS
            raise BadRequest(f"{where}.ts", str(exc) + (' (here: "ts_unit": "s" in the body)' if unitless_small
                                                        else "")) from None
        parsed.append(Event(item_id, at))
    batch_id = body.get("batch_id")
    if batch_id is None:
        batch_id = uuid.uuid4().hex
    elif not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise BadRequest("batch_id", f"1..{MAX_BATCH_ID} characters among letters, digits and ._:-")
    return EventBatch(user_id, batch_id, tuple(parsed))


_BATCH_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_BATCH_ID}}}")
