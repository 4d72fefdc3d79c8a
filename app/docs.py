"""GET /openapi.yaml (the API's OpenAPI document for the catalog the service runs: app/openapi.py) and
GET /docs (Swagger UI from the PyPI package ``swagger-ui-bundle``, served from this process: no CDN)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, render_template_string, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from app.api import facet_values_if_readable, live_catalog
from app.openapi import Samples, ServedDocument, served_document
from app.state import service_of
from facetrec.errors import Unavailable
from facetrec.experiments import CONTROL

bp = Blueprint("docs", __name__)
log = logging.getLogger("facetrec.service")
ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png",
          "favicon-16x16.png"}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>facetrec API</title>
<link rel="stylesheet" href="{{ base }}/swagger-ui.css">
<link rel="icon" type="image/png" href="{{ base }}/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{{ base }}/swagger-ui-bundle.js"></script>
<script src="{{ base }}/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "{{ spec }}", dom_id: "#swagger-ui", deepLinking: true,
                             presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
                             layout: "StandaloneLayout"});
</script>
</body>
</html>
"""


_served = ServedDocument()


def _samples(ctx) -> Samples:
    """A user the live user index holds (the most recently updated) and the two most popular items."""
    try:
        users = ctx.es.search(index=ctx.settings.user_alias, size=1, source=False,
                              sort=[{"updated_at": "desc"}])["hits"]["hits"]
        items = ctx.es.search(index=ctx.settings.item_alias, size=2, source=False,
                              sort=[{"popularity": {"order": "desc", "missing": "_last"}}])["hits"]["hits"]
    except Exception as exc:  # noqa: BLE001 - the document is served with placeholder examples
        log.warning("samples for the OpenAPI examples not read", extra={"event": "openapi_samples",
                                                                       "detail": str(exc)[:300]})
        return Samples(None, [])
    return Samples(users[0]["_id"] if users else None, [h["_id"] for h in items])


@bp.get("/openapi.yaml")
def openapi_document():
    ctx = service_of()
    catalog = live_catalog()
    summary = facet_values_if_readable()
    try:
        experiment = ctx.arms.experiments.get()
    except Unavailable:   # the experiment unreadable: the document names control only
        experiment = None
    arms = experiment.arm_names if experiment else [CONTROL]
    key = (summary.item_index if summary else None, tuple(arms))
    text = _served.get(key, lambda: served_document(catalog, summary, _samples(ctx), ctx.settings.retrieval_mode,
                                                    list(arms)))
    return Response(text, mimetype="application/yaml")


@bp.get("/docs")
def docs_page():
    return render_template_string(PAGE, base="/docs", spec="/openapi.yaml")


@bp.get("/docs/<name>")
def docs_asset(name: str):
    if name not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, name, max_age=3600)
