"""GET / : a small HTML page to look at a user's homepage (calls the JSON API from the browser).

It opens on the first sample user's rows, offers only the retrieval modes every homepage row
allows, and a select of the live values for each user filter (``facetrec.catalog.facets``)."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request

from app.api import facet_values_if_readable, live_catalog
from app.requests import parse_limit
from app.state import service_of
from facetrec.catalog.facets import LISTED
from facetrec.catalog.row_info import filter_text, mode_options
from facetrec.errors import ClusterUnavailable

bp = Blueprint("page", __name__)


def page_context(catalog, default_mode: str, summary) -> dict:
    """What the template shows: the user filters (with their values when the live generation's list
    is complete), the declared facets, the mode options and each row's filters as a phrase."""
    facets = summary.facets if summary is not None else {}
    filters = [{"name": param, "values": summary.known_values(name) if summary is not None else None}
               for param, name in catalog.user_filter_params.items()]
    declared = []
    for name, kind in catalog.facets.items():
        entry = facets.get(name) or {}
        if kind in LISTED:
            shown = f"{len(entry['values'])}{'' if entry['complete'] else '+'} values" if entry else "values unknown"
        elif entry.get("min") is not None:
            low, high = (f"{v:.3g}" if isinstance(v, float) else str(v) for v in (entry["min"], entry["max"]))
            shown = f"{low} … {high}"
        else:
            shown = "no values"
        declared.append({"name": name, "type": kind, "shown": shown, "user_filter": name in catalog.user_filters})
    return {"user_filters": filters, "facets": declared, "modes": mode_options(catalog.homepage_rows(), default_mode),
            "row_filters": {row.id: filter_text(row) for row in catalog.rows.values()}}


@bp.get("/")
def index():
    ctx = service_of()
    catalog = live_catalog()
    return render_template("homepage.html", item_fields=catalog.schema.display_fields if catalog.schema else ["title"],
                           **page_context(catalog, ctx.settings.retrieval_mode, facet_values_if_readable()))


@bp.get("/v1/sample-users")
def sample_users():
    """A few user ids from the live user index, for the page's picker (most recently updated first)."""
    ctx = service_of()
    limit = parse_limit(request.args)
    try:
        hits = ctx.es.search(index=ctx.settings.user_alias, size=limit, source=False,
                                sort=[{"updated_at": "desc"}])["hits"]["hits"]
    except Exception as exc:  # noqa: BLE001
        raise ClusterUnavailable(str(exc)) from exc
    return jsonify({"user_ids": [h["_id"] for h in hits]})
