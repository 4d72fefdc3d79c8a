"""JSON endpoints. Thin: parse (app.requests), call facetrec.homepage.recommend, return."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, g, jsonify, request

from app.requests import parse_events_body, parse_homepage_args, parse_rows_body
from facetrec.es import alias_index
from facetrec.homepage import cluster_errors_as_unavailable, recommend
from facetrec.rows import BadRequest

bp = Blueprint("api", __name__)


def _ctx() -> dict:
    return current_app.extensions["facetrec"]


def _serve(query):
    ctx = _ctx()
    request.environ["facetrec.user_id"] = query.user_id
    page = recommend(ctx["es"], ctx["target"], query.user_id, query.rows, query.user_filters, mode=query.mode,
                     sizes=query.sizes, metrics=ctx["metrics"], request_id=g.get("request_id"),
                     observe=ctx["recall_monitor"].observe)
    return jsonify(page)


@bp.get("/v1/users/<path:user_id>/homepage")
def homepage(user_id: str):
    ctx = _ctx()
    return _serve(parse_homepage_args(user_id, request.args.to_dict(flat=True), ctx["catalog"],
                                      ctx["settings"].retrieval_mode))


@bp.post("/v1/users/<path:user_id>/rows")
def rows(user_id: str):
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body", "expected a JSON object (Content-Type: application/json)")
    ctx = _ctx()
    return _serve(parse_rows_body(user_id, body, ctx["catalog"], ctx["settings"].retrieval_mode))


@bp.post("/v1/users/<path:user_id>/events")
def events(user_id: str):
    """Append an event batch to the user's history and recompute the user vector (facetrec.user_events)."""
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body", "expected a JSON object (Content-Type: application/json)")
    batch = parse_events_body(user_id, body, datetime.now(timezone.utc))
    ctx = _ctx()
    request.environ["facetrec.user_id"] = batch.user_id
    started = time.perf_counter()
    with cluster_errors_as_unavailable():
        applied = ctx["events"].submit(batch)
    metrics = ctx["metrics"]
    metrics.timing("events.apply", (time.perf_counter() - started) * 1000, [f"status:{applied.status}"])
    metrics.increment("events.batches", [f"status:{applied.status}"])
    if applied.attempts > 1:
        metrics.increment("events.write_conflicts", value=applied.attempts - 1)
    return jsonify(dataclasses.asdict(applied))


@bp.get("/v1/rows")
def row_catalog():
    catalog = _ctx()["catalog"]
    return jsonify({"homepage": list(catalog.homepage), "user_filters": list(catalog.user_filters),
                    "rows": [{"id": r.id, "title": r.title, "size": r.size} for r in catalog.rows.values()]})


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ctx = _ctx()
    es, settings = ctx["es"], ctx["settings"]
    try:
        aliases = {}
        for alias in (settings.item_alias, settings.user_alias):
            index = alias_index(es, alias)
            if index is None:
                return jsonify({"status": "not_ready", "reason": f"alias {alias} does not exist: "
                                "run the nightly pipeline (`facetrec pipeline run`)"}), 503
            aliases[alias] = index
            es.count(index=alias)
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        return jsonify({"status": "not_ready", "reason": f"Elasticsearch: {type(exc).__name__}"}), 503
    return jsonify({"status": "ready", "aliases": aliases})
