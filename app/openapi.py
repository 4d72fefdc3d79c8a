"""The OpenAPI document the service serves: ``app/openapi.yaml`` (catalog-neutral) completed for the
catalog the live generation was made with.

From the live catalog schema and the values the live generation holds (``facetrec.catalog.facets``):

* the user filters as query parameters of a homepage and as ``filters`` of a rows request, each
  with its value type (a keyword's values: those the generation lists);
* ``Clause``: the facets rows filter on, each with its value type (term, terms, range);
* ``Item``: the fields each item of a response carries;
* the row ids the service serves, the modes every row allows, the live experiment arms;
* examples that answer 200 on this catalog (a user the user index holds, items the model knows)
  and 400 examples whose body is what the service says (computed by the service's own parsing).

The request schemas describe requests the service accepts: a subset of what it takes (listed values,
configured row ids, sizes that fit every row and the page's limit), so a schema-driven fuzzer's valid
requests are never refused. Built once per live generation (and set of arms).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import weakref
from pathlib import Path
from typing import Any, Callable

import yaml
from flask import current_app
from werkzeug.datastructures import MultiDict

from app.requests import (
    AD_HOC_SIZE,
    MAX_ROWS,
    parse_events_body,
    parse_homepage_args,
    parse_rows_body,
)
from facetrec.catalog.facets import FacetSummary
from facetrec.catalog.row_info import common_modes
from facetrec.catalog.rows import MAX_PAGE_HITS, RowCatalog
from facetrec.errors import BadRequest

BASE_PATH = Path(__file__).with_name("openapi.yaml")
MAX_LISTED = 200           # a keyword's values listed as an enum (the facet summary's own limit)
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
USER_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"}
DATE = "^(19[7-9][0-9]|20[0-9][0-9])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$"


def base_document() -> dict:
    return yaml.safe_load(BASE_PATH.read_text())


def value_schema(kind: str, listed: list | None) -> dict:
    """The schema of one value of a facet of type ``kind`` a caller may send (``listed``: its values,
    when complete)."""
    if kind in ("keyword", "keyword_list"):
        # The listed values the service takes back (check_value: 1..256 characters, no control characters).
        usable = [v for v in (listed or [])[:MAX_LISTED] if 1 <= len(v) <= 256 and not any(ord(c) < 32 for c in v)]
        if usable:
            return {"type": "string", "enum": usable}
        return {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\x00-\\x1f]+$"}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "integer":
        return {"type": "integer", "minimum": -(2 ** 53), "maximum": 2 ** 53}
    if kind == "float":
        return {"type": "number", "minimum": -1e15, "maximum": 1e15}
    return {"type": "string", "pattern": DATE, "description": "a day, yyyy-MM-dd"}


def served_value_schema(kind: str) -> dict:
    """The schema of one value of a facet of type ``kind`` as the service returns it (an item's field,
    a configured row's filter): its type only, none of the limits of what a caller may send."""
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "integer":
        return {"type": "integer"}
    if kind == "float":
        return {"type": "number"}
    if kind == "date":
        return {"type": "string", "description": "a day (yyyy-MM-dd) or an ISO 8601 time"}
    return {"type": "string"}


def _clause(facets: dict[str, str], values: Callable[[str, str], dict], max_terms: int | None,
            bounds_extra: dict, description: str) -> dict:
    """A term, terms or range filter on one of ``facets`` (name -> type), each value as ``values`` says."""
    def one_of(kind: str, body: Callable[[str, str], dict], facets: dict[str, str]) -> dict:
        return {"type": "object", "additionalProperties": False, "required": [kind], "properties": {kind: {
            "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "properties": {name: body(name, t) for name, t in facets.items()}}}}

    if not facets:
        return {"description": "this catalog has no facets: rows take no filters", "not": {}}
    ranged = {n: t for n, t in facets.items() if t in ("integer", "float", "date")}
    terms = {"type": "array", "minItems": 1, **({"maxItems": max_terms} if max_terms else {})}
    variants = [one_of("term", values, facets),
                one_of("terms", lambda n, t: {**terms, "items": values(n, t)}, facets)]
    if ranged:
        variants.append(one_of("range", lambda n, t: {
            "type": "object", "minProperties": 1, "additionalProperties": False,
            "properties": {**{op: values(n, t) for op in ("gt", "gte", "lt", "lte")}, **bounds_extra}}, ranged))
    return {"description": f"{description} ({', '.join(facets)})", "oneOf": variants}


def clause_schema(catalog: RowCatalog, summary: FacetSummary | None) -> dict:
    """``Clause``: a term, terms or range filter a caller may send on one of the catalog's facets."""
    def values(name: str, kind: str) -> dict:
        return value_schema(kind, summary.known_values(name) if summary else None)

    return _clause(dict(catalog.facets), values, 10, {}, "a filter on one of the catalog's facets")


def row_clause_schema(catalog: RowCatalog) -> dict:
    """``RowClause``: a configured row's filter as ``GET /v1/rows`` describes it (any value of the facet's
    type; a date range names the format its bounds are read in)."""
    return _clause(dict(catalog.facets), lambda name, kind: served_value_schema(kind), None,
                   {"format": {"type": "string"}}, "a configured row's filter on one of the catalog's facets")


def user_filter_schemas(catalog: RowCatalog, summary: FacetSummary | None) -> dict[str, dict]:
    """Request parameter -> the schema of its value."""
    out = {}
    for param, name in catalog.user_filter_params.items():
        kind = catalog.facets[name]
        out[param] = value_schema(kind, summary.known_values(name) if summary else None)
    return out


class Samples:
    """What the examples name: a user the user index holds and items the model knows."""

    def __init__(self, user_id: str | None, item_ids: list[str]):
        self.user_id, self.item_ids = user_id, item_ids


def served_document(catalog: RowCatalog, summary: FacetSummary | None, samples: Samples, default_mode: str,
                    arms: list[str], now: dt.datetime | None = None) -> dict:
    """The base document completed for ``catalog`` (see the module doc)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    doc = base_document()
    schema = catalog.schema
    name = schema.name if schema else "unnamed"
    doc["info"]["description"] += (f"\n**This service runs the catalog `{name}`**: facets "
                                   f"{', '.join(f'`{f}` ({t})' for f, t in catalog.facets.items()) or 'none'}; "
                                   f"user filters {', '.join(f'`{p}`' for p in catalog.user_filter_params) or 'none'}.\n")
    components = doc["components"]["schemas"]
    components["Clause"] = clause_schema(catalog, summary)
    components["RowClause"] = row_clause_schema(catalog)
    components["Item"]["properties"].update(_item_properties(catalog))
    components["ItemFields"]["properties"].update(_item_write_properties(catalog))
    filters = user_filter_schemas(catalog, summary)
    # Sizes and rows per request such that no request the document allows asks for more than MAX_PAGE_HITS
    # items: a size every row allows, and as many rows as fit when each brings the most one row can (a size
    # asked for, a configured row's own size, an ad-hoc row's default); a homepage's size fits its rows.
    size_limit = min(row.size_limit for row in catalog.rows.values())
    largest = max(size_limit, AD_HOC_SIZE, *(row.size for row in catalog.rows.values()))
    per_page = max(1, min(MAX_ROWS, MAX_PAGE_HITS // largest))
    homepage_size_limit = max(1, min(size_limit, MAX_PAGE_HITS // len(catalog.homepage)))
    modes = common_modes(catalog.rows.values(), default_mode)
    row_ids = list(catalog.rows)
    for item in doc["paths"].values():       # every user id a path takes: the ids check_user_id accepts
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "user_id":
                    parameter["schema"] = dict(USER_ID)
    _homepage_parameters(doc, catalog, filters, row_ids, homepage_size_limit, per_page, modes, arms)
    components["RowsRequest"] = _rows_request(filters, row_ids, size_limit, per_page, modes, default_mode, arms)
    components["EventsRequest"] = _events_request(now)
    _examples(doc, catalog, summary, samples, default_mode, now)
    return doc


def _item_properties(catalog: RowCatalog) -> dict:
    schema = catalog.schema
    if schema is None:
        return {}
    props: dict[str, Any] = {key: {"type": "string"} for key in ("image", "url") if getattr(schema.items, key)}
    for facet in schema.facets:
        if facet.shown:
            one = served_value_schema(facet.type)
            props[facet.name] = {"type": "array", "items": one} if facet.type == "keyword_list" else one
    return props


def _item_write_properties(catalog: RowCatalog) -> dict:
    """``ItemFields``: what an item change may set (``facetrec.items.changes.item_fields_of``): image and
    url where the catalog has them, every facet as a caller sends its values; null removes a field (patch)."""
    schema = catalog.schema
    if schema is None:
        return {}
    props: dict[str, Any] = {key: {"type": "string", "minLength": 1, "maxLength": 2048, "nullable": True}
                             for key in ("image", "url") if getattr(schema.items, key)}
    for facet in schema.facets:
        one = value_schema(facet.type, None)
        if facet.range and facet.type in ("integer", "float"):
            low, high = facet.range
            one = {**one, **({"minimum": low} if low is not None else {}), **({"maximum": high} if high is not None else {})}
        props[facet.name] = {**({"type": "array", "items": one, "maxItems": 100} if facet.type == "keyword_list" else one),
                             "nullable": True}
    return props


def _homepage_parameters(doc: dict, catalog: RowCatalog, filters: dict, row_ids: list[str], size_limit: int,
                         per_page: int, modes: list[str], arms: list[str]) -> None:
    operation = doc["paths"]["/v1/users/{user_id}/homepage"]["get"]
    one = "(" + "|".join(re.escape(r) for r in row_ids) + ")"
    for parameter in operation["parameters"]:
        name = parameter["name"]
        if name == "rows":
            parameter["schema"] = {"type": "string", "pattern": f"^{one}(,{one}){{0,{per_page - 1}}}$"}
        elif name == "size":
            parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": size_limit}
        elif name == "mode":
            parameter["schema"] = {"type": "string", "enum": modes}
        elif name == "arm":
            parameter["schema"] = {"type": "string", "enum": arms}
    homepage_size = sum(catalog.rows[r].size for r in catalog.homepage)
    for param, value in filters.items():
        operation["parameters"].append({
            "name": param, "in": "query", "schema": value,
            "description": f"a user filter on `{catalog.user_filter_params[param]}` (exact, case-sensitive; "
                           "GET /v1/facets lists the values)"})
    operation["description"] += f" The default homepage has {len(catalog.homepage)} rows ({homepage_size} items)."


def _rows_request(filters: dict, row_ids: list[str], size_limit: int, per_page: int, modes: list[str],
                  default_mode: str, arms: list[str]) -> dict:
    configured = {"type": "string", "enum": row_ids}
    ad_hoc = {"type": "object", "required": ["id", "ad_hoc"], "additionalProperties": False,
              "description": "an ad-hoc row over the catalog's facets; its id must not be a configured row's",
              "properties": {"id": {"type": "string", "pattern": ID_PATTERN, "not": {"enum": row_ids}},
                             "ad_hoc": {"type": "boolean", "enum": [True]},
                             "title": {"type": "string", "maxLength": 200},
                             "size": {"type": "integer", "minimum": 1, "maximum": size_limit},
                             "filter": {"type": "array", "maxItems": 5, "items": {"$ref": "#/components/schemas/Clause"}},
                             "must_not": {"type": "array", "maxItems": 5,
                                          "items": {"$ref": "#/components/schemas/Clause"}}}}
    at_size = {"type": "object", "required": ["id"], "additionalProperties": False,
               "description": "a configured row, at another size",
               "properties": {"id": configured, "size": {"type": "integer", "minimum": 1, "maximum": size_limit},
                              "ad_hoc": {"type": "boolean", "enum": [False]}}}
    out = {"type": "object", "additionalProperties": False,
           "description": "rows (each id once: a repeated row id is a 400), user filters, a mode and an arm",
           "properties": {
               "rows": {"type": "array", "minItems": 1, "maxItems": per_page, "uniqueItems": True,
                        "items": {"oneOf": [configured, at_size, ad_hoc]}},
               "filters": {"type": "object", "additionalProperties": False,
                           "properties": {p: {"oneOf": [v, {"type": "array", "minItems": 1, "maxItems": 10, "items": v}]}
                                          for p, v in filters.items()}},
               "mode": {"type": "string", "enum": modes},
               "arm": {"type": "string", "enum": arms}}}
    if set(modes) - {default_mode}:   # ad-hoc rows are served in the default mode only
        out["description"] += f"; a mode other than {default_mode!r} only for configured rows"
        out["anyOf"] = [{"properties": {"mode": {"enum": [default_mode]}}},
                        {"properties": {"rows": {"items": {"oneOf": [configured, at_size]}}}}]
    return out


def _digits_between(low: str, high: str) -> str:
    """A regular expression matching the decimal numbers of one width from ``low`` to ``high``."""
    width = len(low) - 1
    if low == high:
        return low
    if not width or (low[1:] == "0" * width and high[1:] == "9" * width):
        return f"[{low[0]}-{high[0]}]" + (f"[0-9]{{{width}}}" if width else "")
    if low[0] == high[0]:
        return f"{low[0]}(?:{_digits_between(low[1:], high[1:])})"
    parts = [f"{low[0]}(?:{_digits_between(low[1:], '9' * width)})"]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}][0-9]{{{width}}}")
    parts.append(f"{high[0]}(?:{_digits_between('0' * width, high[1:])})")
    return "|".join(parts)


def _events_request(now: dt.datetime) -> dict:
    """Event batches: times as ISO 8601 with a zone, or epoch numbers in the unit ``ts_unit`` says
    (milliseconds by default). Numbers up to the start of the day before this document was made; ISO
    times in the years 1970 up to the year before that (the pattern cannot compare times, and a zone
    moves a time by hours): a document served for days after it was made still never names a future time."""
    last = (now - dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    years = _digits_between("1970", str(last.year - 1))
    iso = {"type": "string", "pattern": f"^({years})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
                                        "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]0[0-9]:00)$",
           "description": f"ISO 8601 with a zone (the years 1970-{last.year - 1} pass the pattern; a time ahead of "
                          "the request is refused by the service)"}

    def batch(unit: str | None, low: float, high: float) -> dict:
        event = {"type": "object", "required": ["item_id", "ts"], "additionalProperties": False,
                 "properties": {"item_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
                                "ts": {"oneOf": [iso, {"type": "number", "minimum": low, "maximum": high}]}}}
        out = {"type": "object", "required": ["events"] + (["ts_unit"] if unit else []), "additionalProperties": False,
               "properties": {"batch_id": {"type": "string", "pattern": ID_PATTERN},
                              "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": event}}}
        out["properties"]["ts_unit"] = {"type": "string", "enum": [unit] if unit else ["ms"]}
        return out

    epoch_ms = last.timestamp() * 1000
    return {"description": "a batch of the user's events; `ts_unit` (ms or s) says the unit of numeric times "
                           "(default ms; a unitless number below 1e11 is refused as ambiguous)",
            "oneOf": [batch(None, 1e11, epoch_ms), batch("s", 1e8, last.timestamp())]}


def _error(call: Callable[[], Any]) -> dict | None:
    try:
        call()
    except BadRequest as exc:
        return {"error": {"code": "bad_request", "message": exc.message, "field": exc.field}}
    return None


def _case_variant(summary: FacetSummary | None, catalog: RowCatalog, names) -> tuple[str, str, str] | None:
    """(facet, listed value, its case variant) of a keyword facet among ``names`` (None: none has one)."""
    for name in names:
        for value in (summary.known_values(name) or []) if summary else []:
            variant = value.swapcase()
            if variant != value and variant not in summary.known_values(name):
                return name, value, variant
    return None


def _examples(doc: dict, catalog: RowCatalog, summary: FacetSummary | None, samples: Samples, default_mode: str,
              now: dt.datetime) -> None:
    paths = doc["paths"]
    user = samples.user_id or "someone-new"
    homepage = paths["/v1/users/{user_id}/homepage"]["get"]
    rows = list(catalog.rows)
    for parameter in homepage["parameters"]:
        examples = {"user_id": {"known": {"summary": "a user the live generation holds", "value": user},
                                "unknown": {"summary": "a user it does not know (popular rows)", "value": "someone-new"}},
                    "rows": {"two": {"summary": "two rows", "value": ",".join(rows[:2])}},
                    "size": {"five": {"summary": "5 items per row", "value": 5}},
                    "mode": {"default": {"summary": "the rows' own mode", "value": default_mode}},
                    "arm": {"control": {"summary": "the control arm (always live)", "value": "control"}}}
        if parameter["name"] in examples:
            parameter["examples"] = examples[parameter["name"]]
        elif parameter["name"] in catalog.user_filter_params and summary:
            listed = summary.known_values(catalog.user_filter_params[parameter["name"]])
            if listed:
                parameter["examples"] = {"listed": {"summary": "a listed value", "value": listed[0]}}
    errors = {"unknown_parameter": ("GET", f"/v1/users/{user}/homepage?colour=blue",
                                    lambda: parse_homepage_args(user, MultiDict({"colour": "blue"}), catalog,
                                                                default_mode, facets=lambda: summary)),
              "repeated_parameter": ("GET", f"/v1/users/{user}/homepage?rows={rows[0]}&rows={rows[0]}",
                                     lambda: parse_homepage_args(user, MultiDict([("rows", rows[0]), ("rows", rows[0])]),
                                                                 catalog, default_mode, facets=lambda: summary))}
    variant = _case_variant(summary, catalog, catalog.user_filter_params.values())
    if variant:
        param = next(p for p, n in catalog.user_filter_params.items() if n == variant[0])
        errors["case"] = ("GET", f"/v1/users/{user}/homepage?{param}={variant[2]}",
                          lambda: parse_homepage_args(user, MultiDict({param: variant[2]}), catalog, default_mode,
                                                      facets=lambda: summary))
    _response_examples(homepage, errors)

    post_rows = paths["/v1/users/{user_id}/rows"]["post"]
    post_rows["parameters"][0]["examples"] = {"known": {"summary": "a user the live generation holds", "value": user}}
    ad_hoc: dict[str, Any] = {"id": "my_row", "ad_hoc": True, "title": "A row of my own", "size": 5}
    keyword = next(((n, summary.known_values(n)) for n, t in catalog.facets.items()
                    if t in ("keyword", "keyword_list") and summary and summary.known_values(n)), None)
    if keyword:
        ad_hoc["filter"] = [{"term": {keyword[0]: keyword[1][0]}}]
    body: dict[str, Any] = {"rows": [rows[0], {"id": rows[1 % len(rows)], "size": 3}, ad_hoc]}
    if len(rows) == 1:
        body["rows"] = [rows[0], ad_hoc]
    media = post_rows["requestBody"]["content"]["application/json"]
    media["examples"] = {"mixed": {"summary": "a configured row, one at 3 items, and an ad-hoc row", "value": body}}
    shadow = {"rows": [{"id": rows[0], "ad_hoc": True}]}
    errors = {"shadowing": ("POST", f"/v1/users/{user}/rows", shadow,
                            lambda: parse_rows_body(user, shadow, catalog, default_mode, facets=lambda: summary))}
    variant = _case_variant(summary, catalog, catalog.facets)
    if variant:
        cased = {"rows": [{"id": "my_row", "ad_hoc": True, "filter": [{"term": {variant[0]: variant[2]}}]}]}
        errors["case"] = ("POST", f"/v1/users/{user}/rows", cased,
                          lambda: parse_rows_body(user, cased, catalog, default_mode, facets=lambda: summary))
    _response_examples(post_rows, errors)

    events = paths["/v1/users/{user_id}/events"]["post"]
    events["parameters"][0]["examples"] = {"known": {"summary": "a user the live generation holds", "value": user}}
    items = samples.item_ids or ["an-item"]
    at = (now - dt.timedelta(days=2)).replace(microsecond=0)
    media = events["requestBody"]["content"]["application/json"]
    media["examples"] = {
        "iso": {"summary": "two items, ISO 8601 times",
                "value": {"batch_id": "example-1", "events": [
                    {"item_id": i, "ts": (at + dt.timedelta(minutes=n)).isoformat().replace("+00:00", "Z")}
                    for n, i in enumerate(items[:2])]}},
        "epoch_seconds": {"summary": "epoch seconds, with their unit",
                          "value": {"batch_id": "example-2", "ts_unit": "s",
                                    "events": [{"item_id": items[0], "ts": int(at.timestamp())}]}}}
    ambiguous = {"events": [{"item_id": items[0], "ts": 1700000000}]}
    _response_examples(events, {"ambiguous_epoch": ("POST", f"/v1/users/{user}/events", ambiguous,
                                                    lambda: parse_events_body(user, ambiguous, now))})
    paths["/v1/sample-users"]["get"]["parameters"][0]["examples"] = {"three": {"summary": "three user ids", "value": 3}}


def _response_examples(operation: dict, errors: dict) -> None:
    """The 400 examples of ``operation``: each a request (``x-request``) and what the service says to it."""
    examples = {}
    for name, spec in errors.items():
        method, path, *rest = spec
        body, call = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        value = _error(call)
        if value is None:
            continue
        request = {"method": method, "path": path, **({"body": body} if body is not None else {})}
        examples[name] = {"summary": value["error"]["message"][:80], "x-request": request, "value": value}
    content = operation["responses"]["400"].setdefault("content", {}).setdefault("application/json", {})
    content.setdefault("schema", {"$ref": "#/components/schemas/Error"})
    content["examples"] = examples


class ServedDocument:
    """The served document of each app, built once per (live item generation, live arms) (thread-safe).

    Kept per Flask app: the key names the live pair, not the row config or the default mode an app
    serves it with, so two apps of one process over one pair (other rows) each get their own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # app -> (key, text)

    def get(self, key: tuple, build: Callable[[], dict]) -> bytes:
        app = current_app._get_current_object()
        with self._lock:
            built = self._built.get(app)
            if built is not None and built[0] == key:
                return built[1]
        text = yaml.safe_dump(build(), sort_keys=False, width=120, allow_unicode=True).encode()
        with self._lock:
            self._built[app] = (key, text)
        return text
