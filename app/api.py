"""JSON endpoints. Thin: parse (app.requests), call facetrec.serving.homepage.recommend, return."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone

from flask import Blueprint, g, jsonify, request

from app.requests import parse_events_body, parse_homepage_args, parse_rows_body, query_args
from app.state import service_of
from facetrec.catalog.facets import MATCHING, FacetSummary, LiveGeneration
from facetrec.catalog.row_info import describe_catalog
from facetrec.catalog.rows import RowCatalog
from facetrec.errors import BadRequest, ClusterUnavailable
from facetrec.es import alias_index, cluster_errors_as_unavailable
from facetrec.serving.homepage import recommend

bp = Blueprint("api", __name__)
log = logging.getLogger("facetrec.service")
impressions = logging.getLogger("facetrec.impressions")   # one line per page served during an experiment


def live_generation() -> LiveGeneration:
    """The live item generation (its schema and values, cached per generation); ClusterUnavailable
    when it cannot be read."""
    try:
        return service_of().facets.generation()
    except Exception as exc:  # noqa: BLE001 - any failure to read it is the cluster's
        raise ClusterUnavailable(f"live generation: {exc}") from exc


def live_catalog() -> RowCatalog:
    """The configured rows over the live generation's catalog schema (what a request is checked
    against); the configured schema when the live generation cannot be read (the page's own searches
    then say what the cluster says)."""
    try:
        return live_generation().catalog
    except ClusterUnavailable:
        return service_of().catalog


def facet_summary() -> FacetSummary:
    """The live generation's facet values (cached per generation); ClusterUnavailable when unreadable."""
    try:
        return live_generation().summary()
    except Exception as exc:  # noqa: BLE001 - any failure to read them is the cluster's
        raise ClusterUnavailable(f"facet values: {exc}") from exc


def facet_values_if_readable() -> FacetSummary | None:
    """For the case rule of caller values: a page is never refused because the values cannot be read."""
    try:
        return facet_summary()
    except ClusterUnavailable as exc:
        log.warning("facet values unavailable; values not checked", extra={"event": "facets_unavailable",
                                                                           "detail": str(exc)[:500]})
        return None


def _serve(query):
    ctx = service_of()
    request.environ["facetrec.user_id"] = query.user_id
    arm, experiment = ctx.arms.choose(query.user_id, query.arm)
    request.environ["facetrec.arm"] = arm.name
    page = recommend(ctx.es, arm.target, query.user_id, query.rows, query.user_filters, mode=query.mode,
                     sizes=query.sizes, metrics=arm.metrics, request_id=g.get("request_id"),
                     observe=arm.monitor.observe)
    source = page["rows"][0]["source"] if page["rows"] else "popular"
    arm.metrics.increment("homepage.pages", [f"source:{source}"])
    if experiment is not None:   # the experiment readout's input (facetrec experiment report)
        impressions.info("impression", extra={
            "event": "impression", "experiment": experiment.id, "arm": arm.name, "pinned": query.arm is not None,
            "user_id": query.user_id, "generation": page["generation"], "request_id": g.get("request_id"),
            "items": [i["id"] for row in page["rows"] for i in row["items"]]})
    return jsonify({"user_id": page["user_id"], "arm": arm.name, "experiment": experiment.id if experiment else None,
                    **{k: v for k, v in page.items() if k != "user_id"}})


@bp.get("/v1/users/<path:user_id>/homepage")
def homepage(user_id: str):
    ctx = service_of()
    return _serve(parse_homepage_args(user_id, request.args, live_catalog(), ctx.settings.retrieval_mode,
                                      facets=facet_values_if_readable))


@bp.post("/v1/users/<path:user_id>/rows")
def rows(user_id: str):
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body", "expected a JSON object (Content-Type: application/json)")
    ctx = service_of()
    return _serve(parse_rows_body(user_id, body, live_catalog(), ctx.settings.retrieval_mode,
                                  facets=facet_values_if_readable))


@bp.post("/v1/users/<path:user_id>/events")
def events(user_id: str):
    """Append an event batch to the user's history and recompute the user vector (facetrec.events.apply)."""
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body", "expected a JSON object (Content-Type: application/json)")
    batch = parse_events_body(user_id, body, datetime.now(timezone.utc))
    ctx = service_of()
    request.environ["facetrec.user_id"] = batch.user_id
    started = time.perf_counter()
    with cluster_errors_as_unavailable():
        applied = ctx.events.submit(batch)
    metrics = ctx.metrics
    metrics.timing("events.apply", (time.perf_counter() - started) * 1000, [f"status:{applied.status}"])
    metrics.increment("events.batches", [f"status:{applied.status}"])
    if applied.attempts > 1:
        metrics.increment("events.write_conflicts", value=applied.attempts - 1)
    return jsonify(dataclasses.asdict(applied))


def _facets_body(summary: FacetSummary) -> dict:
    schema = live_catalog().schema
    return {"catalog": schema.name if schema else None, "item_generation": summary.item_index,
            "value_matching": MATCHING, "facets": summary.facets}


@bp.get("/v1/rows")
def row_catalog():
    """The configured rows (filters, sizes, modes) and the declared facets with their live values."""
    query_args(request.args, set())
    ctx = service_of()
    return jsonify({**describe_catalog(live_catalog(), ctx.settings.retrieval_mode),
                    **_facets_body(facet_summary())})


@bp.get("/v1/facets")
def facets():
    """The declared facets with the values the live item generation holds."""
    query_args(request.args, set())
    return jsonify(_facets_body(facet_summary()))


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ctx = service_of()
    es, settings = ctx.es, ctx.settings
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
