"""An item's and a user's document as a generation holds them: what the nightly bulk load writes and
what an item change during the day writes (``facetrec.items.apply``), built by the same functions.

An item document carries its id, its generation, its vector (stored as the generation stores vectors:
reduced, with the flat copy, in its partitions' fields) and the fields its catalog schema gives it.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from typing import Any, Mapping

from facetrec.catalog import partitions as vector_partitions
from facetrec.catalog.fields import EXACT_VECTOR_FIELD, ITEM_VECTOR_FIELD, MAX_SEEN_ITEMS
from facetrec.errors import FacetrecError
from facetrec.serving import mips
from facetrec.serving.hit_fields import TITLE_DOC_VALUES_LIMIT

# What an item document holds besides its catalog's own fields (the schema's: ``item_fields``).
ITEM_BASE_FIELDS = (("title", "text"), ("popularity", "float"))


class InvalidDocument(FacetrecError, ValueError):
    """A record that makes no document (its vector is missing, NaN, zero or of the wrong size)."""

    pass


def check_vector(vector: Any, dims: int, require_unit: bool) -> list[float]:
    """Return the vector as floats, or raise InvalidDocument saying what is wrong with it."""
    if vector is None:
        raise InvalidDocument("missing vector")
    values = [float(x) for x in vector]
    if len(values) != dims:
        raise InvalidDocument(f"vector has {len(values)} dims, expected {dims}")
    if not all(math.isfinite(x) for x in values):
        raise InvalidDocument("vector contains NaN or infinity")
    norm = math.sqrt(sum(x * x for x in values))
    if norm == 0.0:
        raise InvalidDocument("vector is all zeros")
    if require_unit and abs(norm - 1.0) > 1e-3:
        raise InvalidDocument(f"vector norm is {norm:.4f}; similarity dot_product needs unit-length vectors")
    return values


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _listish(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def item_fields(schema) -> tuple[tuple[str, str], ...]:
    """(field, type) of everything an item document carries from its record, for a catalog schema
    (``facetrec.catalog.schema.CatalogSchema``; None: only the fields every catalog has). Picklable:
    Spark executors build documents with it."""
    if schema is None:
        return ITEM_BASE_FIELDS
    shown = tuple((key, "keyword") for key in ("image", "url") if getattr(schema.items, key))
    return (*ITEM_BASE_FIELDS, *shown, *((f.name, f.type) for f in schema.facets))


def field_value(value: Any, kind: str) -> Any:
    """A record's value as its document holds it (None: absent): sorted lists without repeats for keyword
    lists (a set of values, the order doc values give them back in: ``facetrec.serving.hit_fields``),
    ISO 8601 for dates, a JSON boolean for booleans."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = _listish(_iso(value))
    if value == [] or value == "":
        return None
    if kind == "keyword_list":
        return sorted(set(value if isinstance(value, list) else [value]), key=str)
    if kind == "boolean" and not isinstance(value, bool):
        return bool(value) if isinstance(value, (int, float)) else {"true": True, "false": False}.get(str(value).lower())
    return value


def item_document(record: Mapping[str, Any], generation: str, dims: int, require_unit: bool,
                  item_vector_scale: float | None = None, exact_copy: bool = False,
                  partitions: Mapping | None = None, fields: tuple[tuple[str, str], ...] = ITEM_BASE_FIELDS
                  ) -> tuple[str, dict]:
    """The item's document: its id, its ``fields`` (``item_fields``) and its vector; with
    ``item_vector_scale`` the vector is stored reduced (``facetrec.serving.mips``), with ``exact_copy`` it
    is indexed a second time in the flat ``EXACT_VECTOR_FIELD`` (exact plans), and with ``partitions``
    once more in the partition field of each partitioned value it has (``facetrec.catalog.partitions``)."""
    item_id = str(record["item_id"])
    vector = check_vector(_listish(record.get("item_embed")), dims, require_unit)
    if item_vector_scale is not None:
        try:
            vector = mips.item_vector(vector, item_vector_scale)
        except ValueError as exc:  # longer than the scale read before loading
            raise InvalidDocument(f"{exc} (the input changed while it was loaded?)") from None
    doc: dict[str, Any] = {"item_id": item_id, "generation": generation, ITEM_VECTOR_FIELD: vector}
    if exact_copy:
        doc[EXACT_VECTOR_FIELD] = vector
    if partitions:
        for field in vector_partitions.document_fields(record, partitions):
            doc[field] = vector
    for field, kind in fields:
        value = field_value(record.get(field), kind)
        if value is not None:
            doc[field] = value
    if len(str(doc.get("title", ""))) > TITLE_DOC_VALUES_LIMIT:   # a page reads titles from doc values
        raise InvalidDocument(f"title of {len(str(doc['title'])):,} characters; at most {TITLE_DOC_VALUES_LIMIT:,}")
    return item_id, doc


def user_document(record: Mapping[str, Any], generation: str, dims: int, require_unit: bool = False) -> tuple[str, dict]:
    user_id = str(record["user_id"])
    doc = {"user_embed": check_vector(_listish(record.get("user_embed")), dims, False),
           "seen_item_ids": [str(x) for x in (_listish(record.get("seen_item_ids")) or [])][-MAX_SEEN_ITEMS:],
           "updated_at": _iso(record.get("updated_at") or datetime.now(timezone.utc)),
           "generation": generation}
    interests = _listish(record.get("user_interests"))
    if interests is not None and len(interests):   # a multi-interest model: K vectors, user_embed the first
        vectors = [check_vector(_listish(v), dims, False) for v in interests]
        if vectors[0] != doc["user_embed"]:
            raise InvalidDocument(f"user {user_id}: user_embed is not the first of its user_interests")
        doc["user_interests"] = vectors
    return user_id, doc


