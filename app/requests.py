"""Parse and validate homepage requests into what `facetrec.homepage.recommend` takes.

Pure functions: every problem raises `BadRequest(field, message)`, which the service turns into
HTTP 400 with a JSON body naming the field. Values only ever become term values or range bounds.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime
from typing import Any, Mapping

from facetrec.rows import MAX_PAGE_HITS, MAX_ROW_SIZE, BadRequest, Row, RowCatalog, check_value, validate_clause
from facetrec.settings import RETRIEVAL_MODES
from facetrec.user_events import (MAX_EVENTS_PER_BATCH, Event, EventBatch, check_item_id, check_user_id,
                                  parse_event_time)

MAX_ROWS = 20
QUERY_PARAMS = {"rows", "size", "mode"}


@dataclasses.dataclass(frozen=True)
class HomepageQuery:
    user_id: str
    rows: list[Row]
    user_filters: list[dict]
    sizes: dict[str, int]
    mode: str | None


def _size(raw: Any, field: str) -> int:
    if isinstance(raw, str):
        if not raw.isdigit():
            raise BadRequest(field, f"must be an integer in 1..{MAX_ROW_SIZE}")
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ROW_SIZE:
        raise BadRequest(field, f"must be an integer in 1..{MAX_ROW_SIZE}")
    return raw


def _mode(raw: Any) -> str | None:
    if raw is None:
        return None
    if raw not in RETRIEVAL_MODES:
        raise BadRequest("mode", f"must be one of {list(RETRIEVAL_MODES)}")
    return raw


def user_filter_clauses(filters: Mapping[str, Any], catalog: RowCatalog, field: str) -> list[dict]:
    clauses = []
    for name, value in filters.items():
        where = f"{field}.{name}"
        if name not in catalog.user_filters:
            raise BadRequest(where, f"not a user filter; allowed: {list(catalog.user_filters)}")
        if isinstance(value, list):
            if not 1 <= len(value) <= 50:
                raise BadRequest(where, "a list of 1..50 values")
            clauses.append({"terms": {name: [check_value(v, catalog.facets[name], where) for v in value]}})
        else:
            clauses.append({"term": {name: check_value(value, catalog.facets[name], where)}})
    return clauses


def parse_homepage_args(user_id: str, args: Mapping[str, str], catalog: RowCatalog,
                        default_mode: str = "knn") -> HomepageQuery:
    """GET /v1/users/<user_id>/homepage?language=&country=&rows=&size=&mode="""
    user_id = check_user_id(user_id)
    unknown = set(args) - QUERY_PARAMS - set(catalog.user_filters)
    if unknown:
        name = sorted(unknown)[0]
        raise BadRequest(name, f"unknown parameter; allowed: {sorted(QUERY_PARAMS | set(catalog.user_filters))}")
    rows = catalog.homepage_rows()
    if "rows" in args:
        ids = [r for r in args["rows"].split(",") if r]
        if not ids or len(ids) > MAX_ROWS:
            raise BadRequest("rows", f"a comma-separated list of 1..{MAX_ROWS} row ids")
        for row_id in ids:
            if row_id not in catalog.rows:
                raise BadRequest("rows", f"unknown row id {row_id[:64]!r}; known: {sorted(catalog.rows)}")
        rows = [catalog.rows[r] for r in dict.fromkeys(ids)]
    sizes = {r.id: _size(args["size"], "size") for r in rows} if "size" in args else {}
    filters = {k: v for k, v in args.items() if k in catalog.user_filters}
    return _checked(HomepageQuery(user_id, rows, user_filter_clauses(filters, catalog, "filters"), sizes,
                                  _mode(args.get("mode"))), catalog, default_mode, "size", "mode")


def parse_rows_body(user_id: str, body: Any, catalog: RowCatalog, default_mode: str = "knn") -> HomepageQuery:
    """POST /v1/users/<user_id>/rows with {"rows": [...], "filters": {...}, "mode": ...}.

    A row is a configured row id, ``{"id": ..., "size": n}``, or an ad-hoc row
    ``{"id", "title", "size", "filter": [...], "must_not": [...]}`` over the declared facets.
    """
    user_id = check_user_id(user_id)
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = set(body) - {"rows", "filters", "mode"}
    if unknown:
        raise BadRequest(sorted(unknown)[0], "unknown field; allowed: rows, filters, mode")
    raw_rows = body.get("rows")
    if raw_rows is None:
        raw_rows = list(catalog.homepage)
    if not isinstance(raw_rows, list) or not 1 <= len(raw_rows) <= MAX_ROWS:
        raise BadRequest("rows", f"must be a list of 1..{MAX_ROWS} rows")
    rows, sizes = [], {}
    for i, entry in enumerate(raw_rows):
        row, size = _row_entry(entry, catalog, f"rows[{i}]")
        if any(r.id == row.id for r in rows):
            raise BadRequest(f"rows[{i}].id", "duplicate row id")
        rows.append(row)
        if size is not None:
            sizes[row.id] = size
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise BadRequest("filters", "must be an object of user filters")
    return _checked(HomepageQuery(user_id, rows, user_filter_clauses(filters, catalog, "filters"), sizes,
                                  _mode(body.get("mode"))), catalog, default_mode, "rows", "mode")


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
            raise BadRequest(mode_field, f"row {row.id!r} does not allow mode {query.mode!r}; its config "
                                         f"allows {sorted({own, *row.caller_modes})}")
        total += size
    if total > MAX_PAGE_HITS:
        raise BadRequest(size_field, f"the rows ask for {total} items; at most {MAX_PAGE_HITS} per request")
    return query


def _row_entry(entry: Any, catalog: RowCatalog, field: str) -> tuple[Row, int | None]:
    if isinstance(entry, str):
        if entry not in catalog.rows:
            raise BadRequest(field, f"unknown row id {entry[:64]!r}")
        return catalog.rows[entry], None
    if not isinstance(entry, dict):
        raise BadRequest(field, "a row id or a row object")
    unknown = set(entry) - {"id", "title", "size", "filter", "must_not"}
    if unknown:
        raise BadRequest(f"{field}.{sorted(unknown)[0]}", "unknown row field")
    row_id = entry.get("id")
    if not isinstance(row_id, str) or not row_id or len(row_id) > 64:
        raise BadRequest(f"{field}.id", "a string of 1..64 characters")
    size = _size(entry["size"], f"{field}.size") if "size" in entry else None
    if "filter" not in entry and "must_not" not in entry:
        if row_id not in catalog.rows:
            raise BadRequest(f"{field}.id", f"unknown row id {row_id!r}")
        return catalog.rows[row_id], size
    clauses = {}
    for key in ("filter", "must_not"):
        value = entry.get(key) or []
        if not isinstance(value, list) or len(value) > 20:
            raise BadRequest(f"{field}.{key}", "a list of at most 20 filters")
        clauses[key] = tuple(validate_clause(c, catalog.facets, f"{field}.{key}") for c in value)
    title = entry.get("title", row_id)
    if not isinstance(title, str) or len(title) > 200:
        raise BadRequest(f"{field}.title", "a string of at most 200 characters")
    return Row(id=row_id, title=title, size=size or 10, filter=clauses["filter"], must_not=clauses["must_not"]), size


MAX_BATCH_ID = 64


def parse_events_body(user_id: str, body: Any, now: datetime) -> EventBatch:
    """POST /v1/users/<user_id>/events with {"events": [{"item_id", "ts"}, ...], "batch_id": ...}.

    ``batch_id`` (optional, recommended) makes a retried request harmless: a batch id the user's
    document already holds is not applied again. Without one, the service makes one up."""
    user_id = check_user_id(user_id)
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = set(body) - {"events", "batch_id"}
    if unknown:
        raise BadRequest(sorted(unknown)[0], "unknown field; allowed: events, batch_id")
    events = body.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise BadRequest("events", f"must be a list of 1..{MAX_EVENTS_PER_BATCH} events")
    parsed = []
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, dict) or set(event) - {"item_id", "ts"} or "item_id" not in event or "ts" not in event:
            raise BadRequest(where, 'an object {"item_id": string, "ts": ISO 8601 time with a zone or epoch ms}')
        item_id = check_item_id(event["item_id"], f"{where}.item_id")
        try:
            at = parse_event_time(event["ts"], now)
        except ValueError as exc:
            raise BadRequest(f"{where}.ts", str(exc)) from None
        parsed.append(Event(item_id, at))
    batch_id = body.get("batch_id")
    if batch_id is None:
        batch_id = uuid.uuid4().hex
    elif not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise BadRequest("batch_id", f"1..{MAX_BATCH_ID} characters among letters, digits and ._:-")
    return EventBatch(user_id, batch_id, tuple(parsed))


_BATCH_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_BATCH_ID}}}")
