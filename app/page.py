"""GET / : a small HTML page to look at a user's homepage (calls the JSON API from the browser)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from facetrec.homepage import ClusterUnavailable

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    catalog = current_app.extensions["facetrec"]["catalog"]
    return render_template("homepage.html", user_filters=list(catalog.user_filters))


@bp.get("/v1/sample-users")
def sample_users():
    """A few user ids from the live user index, for the page's picker."""
    ctx = current_app.extensions["facetrec"]
    limit = request.args.get("limit", "20")
    limit = int(limit) if limit.isdigit() and 0 < int(limit) <= 100 else 20
    try:
        hits = ctx["es"].search(index=ctx["settings"].user_alias, size=limit, source=False,
                                sort=[{"updated_at": "desc"}])["hits"]["hits"]
    except Exception as exc:  # noqa: BLE001
        raise ClusterUnavailable(str(exc)) from exc
    return jsonify({"user_ids": [h["_id"] for h in hits]})
