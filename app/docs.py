"""GET /openapi.yaml (the API's OpenAPI document, app/openapi.yaml) and GET /docs (Swagger UI from the
PyPI package ``swagger-ui-bundle``, served from this process: no CDN)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, render_template_string, send_from_directory
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint("docs", __name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
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


@bp.get("/openapi.yaml")
def openapi_document():
    return Response(OPENAPI_PATH.read_bytes(), mimetype="application/yaml")


@bp.get("/docs")
def docs_page():
    return render_template_string(PAGE, base="/docs", spec="/openapi.yaml")


@bp.get("/docs/<name>")
def docs_asset(name: str):
    if name not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, name, max_age=3600)
