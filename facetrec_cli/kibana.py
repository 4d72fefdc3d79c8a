"""`facetrec kibana`: Kibana saved objects for a catalog (ops/kibana/facetrec.ndjson is the synthetic
catalog's), from its schema: data views on the item and user aliases (always the live generation), a
table of the live generation, one facet-distribution chart per facet rows filter on (a pie for a
keyword or a boolean, a histogram for a list), and a dashboard of them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facetrec.catalog.schema import CatalogSchema
from facetrec.settings import Settings

VERSION = {"coreMigrationVersion": "8.8.0"}
ITEM_VIEW = "facetrec-item-index"


def _visualization(vid: str, title: str, kind: str, field: str, size: int, description: str) -> dict:
    schema = "bucket" if kind == "table" else "segment"
    params = {"perPage": 10} if kind == "table" else {"type": "pie", "isDonut": True} if kind == "pie" else {"type": kind}
    state = {"title": title, "type": kind, "aggs": [
        {"id": "1", "enabled": True, "type": "count", "params": {}, "schema": "metric"},
        {"id": "2", "enabled": True, "type": "terms",
         "params": {"field": field, "size": size, "order": "desc", "orderBy": "1"}, "schema": schema}],
        "params": params}
    search = {"query": {"query": "", "language": "kuery"}, "filter": [],
              "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"}
    return {"type": "visualization", "id": vid,
            "attributes": {"title": title, "visState": _compact(state), "uiStateJSON": "{}",
                           "description": description, "kibanaSavedObjectMeta": {"searchSourceJSON": _compact(search)}},
            "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern",
                            "id": ITEM_VIEW}],
            **VERSION, "typeMigrationVersion": "8.5.0"}


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def saved_objects(schema: CatalogSchema, item_alias: str = "item_index", user_alias: str = "user_index") -> list[dict]:
    """The saved objects of ``schema``'s catalog, in import order."""
    views = [{"type": "index-pattern", "id": ITEM_VIEW,
              "attributes": {"title": item_alias, "name": f"facetrec items of {schema.name} (live generation)",
                             **({"timeFieldName": schema.items.published} if schema.items.published else {})},
              "references": [], **VERSION, "typeMigrationVersion": "8.0.0"},
             {"type": "index-pattern", "id": "facetrec-user-index",
              "attributes": {"title": user_alias, "name": f"facetrec users of {schema.name} (live generation)",
                             "timeFieldName": "updated_at"},
              "references": [], **VERSION, "typeMigrationVersion": "8.0.0"}]
    charts = [_visualization("facetrec-items-by-generation", "Items by generation", "table", "generation", 5,
                             f"Which generation the {item_alias} alias serves, and its document count")]
    for facet in schema.facets:
        if facet.filter and facet.type in ("keyword", "keyword_list", "boolean"):
            kind = "histogram" if facet.type == "keyword_list" else "pie"
            charts.append(_visualization(f"facetrec-items-by-{facet.name}", f"Items by {facet.name}", kind,
                                         facet.name, 20 if kind == "histogram" else 10,
                                         f"Facet distribution: {facet.name}"))
    panels = [{"panelIndex": str(n + 1), "gridData": {"x": 24 * (n % 2), "y": 12 * (n // 2), "w": 24, "h": 12,
                                                      "i": str(n + 1)},
               "panelRefName": f"panel_{n}", "embeddableConfig": {}} for n in range(len(charts))]
    dashboard = {"type": "dashboard", "id": "facetrec-overview",
                 "attributes": {"title": f"facetrec: live generations of {schema.name}",
                                "description": f"The generation behind the {item_alias} alias and its facet distributions",
                                "panelsJSON": _compact(panels),
                                "optionsJSON": _compact({"useMargins": True, "hidePanelTitles": False}),
                                "timeRestore": False,
                                "kibanaSavedObjectMeta": {"searchSourceJSON": _compact(
                                    {"query": {"query": "", "language": "kuery"}, "filter": []})}},
                 "references": [{"name": f"panel_{n}", "type": "visualization", "id": chart["id"]}
                                for n, chart in enumerate(charts)],
                 **VERSION, "typeMigrationVersion": "8.9.0"}
    return [*views, *charts, dashboard]


def ndjson(objects: list[dict]) -> str:
    return "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in objects)


def cmd_kibana(args, settings: Settings) -> int:
    schema = CatalogSchema.load(args.catalog_config) if args.catalog_config else \
        CatalogSchema.load(Path(settings.rows_config).parent / "catalog.yaml")
    text = ndjson(saved_objects(schema, settings.item_alias, settings.user_alias))
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kibana", help="Kibana saved objects (data views, facet charts, a dashboard) for a catalog",
                       description="Write the Kibana saved objects of a catalog (from its schema) as NDJSON for "
                                   "Kibana's saved-objects import: data views on the item and user aliases, a chart "
                                   "per filterable keyword, list and boolean facet, and a dashboard.")
    p.add_argument("--catalog-config", type=Path, help="the catalog schema (default: the catalog.yaml beside "
                                                      "FACETREC_ROWS_CONFIG)")
    p.add_argument("--out", type=Path, help="write here (default: standard output)")
    p.set_defaults(func=cmd_kibana)
