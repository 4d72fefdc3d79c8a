"""Render the composable index templates from settings and apply them idempotently."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from elasticsearch import Elasticsearch

from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD
from facetrec.catalog.partitions import fields as partition_fields
from facetrec.events.log import event_log_index
from facetrec.serving import mips
from facetrec.settings import Settings

FILES = {"item": "item_index.json", "user": "user_index.json", "events": "user_events.json"}


def _pattern(settings: Settings, family: str) -> str:
    """The generations of a family are "<alias>-<generation>", whatever the alias is called; the
    user alias's event log is one index beside them (facetrec.events.apply)."""
    if family == "events":
        return event_log_index(settings)
    return f"{settings.item_alias if family == 'item' else settings.user_alias}-*"


def template_name(settings: Settings, family: str) -> str:
    if family == "events":
        return f"{event_log_index(settings)}-template"
    return f"{settings.item_alias if family == 'item' else settings.user_alias}-template"


def render(settings: Settings, model_version: str) -> dict[str, dict]:
    """The templates as they will be PUT, with the settings-driven parts filled in."""
    rendered = {}
    for family, filename in FILES.items():
        name = template_name(settings, family)
        body = copy.deepcopy(json.loads(Path(settings.templates_dir, filename).read_text()))
        body["index_patterns"] = [_pattern(settings, family)]
        index_settings = body["template"]["settings"]
        index_settings["number_of_shards"] = settings.shards
        index_settings["number_of_replicas"] = settings.replicas
        props = body["template"]["mappings"]["properties"]
        if family == "item":
            reduced = mips.applies(settings)  # unit item vectors with one more coordinate (facetrec.serving.mips)
            props[ITEM_VECTOR_FIELD].update(dims=settings.vector_dims + (1 if reduced else 0),
                                            similarity="dot_product" if reduced else settings.similarity,
                                            index_options=_index_options(settings))
            if settings.exact_vector_copy:
                # The same vectors again, scanned exactly by the rows marked `exact` (facetrec.catalog.rows).
                props[EXACT_VECTOR_FIELD] = {**props[ITEM_VECTOR_FIELD], "index_options": {"type": "flat"}}
            if settings.graph_index:
                # How a filtered search walks the graph, and whether a walk may stop before it has
                # gathered num_candidates (dynamic; docs/benchmarks.md measures both).
                index_settings["dense_vector.hnsw_filter_heuristic"] = settings.hnsw_filter_heuristic
                index_settings["dense_vector.hnsw_enable_early_termination"] = settings.hnsw_early_termination
        elif family == "user":
            props["user_embed"]["dims"] = settings.vector_dims
        body["_meta"] = {**body.get("_meta", {}), "model_version": model_version}
        rendered[name] = body
    return rendered


def partition_properties(settings: Settings, model_version: str, partitions: dict, catalog_graph: bool = True) -> dict:
    """The mapping of a new item generation's partition fields (``facetrec.catalog.partitions``): each is
    the item vector field again (same dims, similarity and graph), holding one value's items. Without
    a catalog graph (the partitions cover the catalog), the item vector field itself is flat: an
    exact scan of whatever a search filters to, and no graph to build."""
    rendered = render(settings, model_version)[template_name(settings, "item")]
    vector = rendered["template"]["mappings"]["properties"][ITEM_VECTOR_FIELD]
    properties = {field: dict(vector) for field in partition_fields(partitions)}
    if not catalog_graph:
        properties[ITEM_VECTOR_FIELD] = {**vector, "index_options": {"type": "flat"}}
    return properties


def _index_options(settings: Settings) -> dict:
    if settings.graph_index:
        return {"type": settings.index_type, "m": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction}
    return {"type": settings.index_type}


def apply(es: Elasticsearch, settings: Settings, model_version: str) -> list[str]:
    """PUT each template unless an identical one is already there. Returns the names written."""
    written = []
    for name, body in render(settings, model_version).items():
        current = es.options(ignore_status=404).indices.get_index_template(name=name).get("index_templates", [])
        if current and _same(current[0]["index_template"], body):
            continue
        es.indices.put_index_template(name=name, **body)
        written.append(name)
    return written


def _flatten(settings: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} and {"a.b": 1} alike (Elasticsearch returns settings nested)."""
    flat: dict = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting_text(value) -> str:
    """A setting as Elasticsearch stores it: strings, with booleans lower-case ("false", not "False")."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _same(existing: dict, desired: dict) -> bool:
    """Compare a stored template with a desired one, normalising what Elasticsearch rewrites."""
    def norm(t: dict) -> dict:
        settings = t.get("template", {}).get("settings", {})
        flat = _flatten(settings.get("index", settings))
        return {
            "index_patterns": sorted(t.get("index_patterns", [])),
            "priority": t.get("priority"),
            "version": t.get("version"),
            "_meta": t.get("_meta"),
            "settings": {k: _setting_text(v) for k, v in flat.items()},
            "mappings": json.loads(json.dumps(t.get("template", {}).get("mappings", {}), sort_keys=True)),
        }
    return norm(existing) == norm(desired)
