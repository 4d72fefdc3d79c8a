"""Item changes during the day (``facetrec.items``): thin views over ``ItemChanges.submit``.

    PUT    /v1/items/{id}      {"item": {title, facets...}, "change_id"}   create or replace
    PATCH  /v1/items/{id}      {"item": {some fields}, "change_id"}        change some fields (null removes one)
    DELETE /v1/items/{id}[?change_id=...]                                  take it down
    POST   /v1/items/changes   {"changes": [{"op", "item_id", "item", "change_id"}, ...]}   up to 100

The fields are checked against the live generation's catalog schema; writes need an admin token
whenever any token is configured (``app.auth``). Each change is logged, then applied to every live
pair; the answer says what it did to each (``pairs``) and where a new vector came from (``vector``).
"""

from __future__ import annotations

import dataclasses
import time

from flask import Blueprint, jsonify, request

from app.api import live_catalog
from app.requests import query_args
from app.state import service_of
from facetrec.errors import BadRequest, Unavailable
from facetrec.es import cluster_errors_as_unavailable
from facetrec.events.batch import check_item_id
from facetrec.items.changes import (
    MAX_CHANGES_PER_BATCH,
    MAX_ITEM_ID_BYTES,
    ChangeIdReused,
    ItemChange,
    check_change_id,
    item_fields_of,
    parse_change,
)

bp = Blueprint("items", __name__)


class NoCatalogSchema(Unavailable):
    """The service runs without a catalog schema (a row config with no catalog.yaml): nothing to check
    item changes against (an operator's fix: a 503 the log explains)."""

    code = "no_catalog_schema"
    public = "item changes need the live catalog's schema and this service has none"
    log_event = "no_catalog_schema"


def _schema():
    schema = live_catalog().schema
    if schema is None:
        raise NoCatalogSchema("FACETREC_ROWS_CONFIG names a row config without a catalog.yaml beside it")
    return schema


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("body", "expected a JSON object (Content-Type: application/json)")
    return body


def _one(op: str, item_id: str):
    item_id = check_item_id(item_id, max_bytes=MAX_ITEM_ID_BYTES)
    if op == "delete":
        args = query_args(request.args, {"change_id"})
        change = ItemChange(item_id, check_change_id(args.get("change_id")), "delete", {})
    else:
        query_args(request.args, set())
        body = _body()
        unknown = sorted(set(body) - {"item", "change_id"})
        if unknown:
            raise BadRequest(str(unknown[0])[:64], "unknown field; allowed: item, change_id")
        change = ItemChange(item_id, check_change_id(body.get("change_id")), op,
                            item_fields_of(body.get("item"), _schema(), "item", op == "patch"))
    return jsonify(_submit([change])[0])


def _submit(changes: list[ItemChange]) -> list[dict]:
    ctx = service_of()
    started = time.perf_counter()
    with cluster_errors_as_unavailable():
        applied = ctx.items.submit_many(changes)
    ctx.metrics.timing("items.apply", (time.perf_counter() - started) * 1000, [f"changes:{len(changes)}"])
    for change, done in zip(changes, applied):
        ctx.metrics.increment("items.changes", [f"op:{change.op}", f"status:{done.status}"])
    return [dataclasses.asdict(done) for done in applied]


@bp.put("/v1/items/<path:item_id>")
def put_item(item_id: str):
    return _one("put", item_id)


@bp.patch("/v1/items/<path:item_id>")
def patch_item(item_id: str):
    return _one("patch", item_id)


@bp.delete("/v1/items/<path:item_id>")
def delete_item(item_id: str):
    return _one("delete", item_id)


@bp.post("/v1/items/changes")
def item_changes():
    query_args(request.args, set())
    body = _body()
    unknown = sorted(set(body) - {"changes"})
    if unknown:
        raise BadRequest(str(unknown[0])[:64], "unknown field; allowed: changes")
    raw = body.get("changes")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHANGES_PER_BATCH:
        raise BadRequest("changes", f"a list of 1..{MAX_CHANGES_PER_BATCH} changes")
    schema = _schema()
    changes = [parse_change(c, schema, f"changes[{i}]") for i, c in enumerate(raw)]
    try:
        return jsonify({"changes": _submit(changes)})
    except ChangeIdReused as exc:   # name the change in the batch, and say the ones before it were applied
        at = next(i for i, c in enumerate(changes) if c is exc.change)
        exc.field = f"changes[{at}].change_id"
        exc.args = (f"{exc} (the {at} change(s) before it were applied; it and the rest were not)",)
        raise
