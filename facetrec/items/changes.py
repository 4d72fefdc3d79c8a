"""An item change, and the checks the API, the command line and the stream make of one.

* ``put``: create or replace an item: its title and facets (and image, url), all of them;
* ``patch``: change some of its fields (``{"in_stock": false}``); a field set to null is removed;
* ``delete``: take it down. A takedown of an item no pair holds is recorded anyway (the item may
  arrive in tonight's catalog, and must not be served then either).

Fields are checked against the live generation's catalog schema (``facetrec.catalog.schema``): a
field the schema does not declare, or a value not of its type, is a ``BadRequest`` naming it. Every
change has an id (``change_id``): a change sent twice with the same id and content is applied once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from datetime import datetime
from typing import Any, Mapping

from facetrec.catalog.rows import check_value
from facetrec.catalog.schema import CatalogSchema
from facetrec.errors import BadRequest, Conflict
from facetrec.events.batch import check_item_id

OPS = ("put", "patch", "delete")
CHANGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_TITLE = 1000
MAX_CHANGES_PER_BATCH = 100

# An item id is part of its change log document's id (``<item id>/<change id>``, the change id at most
# 64 ASCII characters), and Elasticsearch caps a document id at 512 bytes.
MAX_ITEM_ID_BYTES = 400


class ChangeIdReused(Conflict):
    """A change id already logged for this item with another change (a 409)."""

    code = "change_id_reused"

    def __init__(self, change: "ItemChange"):
        super().__init__(f"change_id {change.change_id!r} was already used for item {change.item_id!r} with another "
                         "change; a retry must send the same change, a new change needs a new change_id")
        self.field, self.change = "change_id", change


class ItemBusy(Conflict):
    """An item kept changing under a change (every conditional write lost its race): a 409, retry."""

    code = "item_busy"

    def __init__(self, change: "ItemChange"):
        super().__init__(f"item {change.item_id!r} kept changing under change {change.change_id!r}; the change is "
                         "logged: send it again (same change_id) to apply it")
        self.field = "item_id"


@dataclasses.dataclass(frozen=True)
class ItemChange:
    item_id: str
    change_id: str
    op: str                      # put | patch | delete
    fields: Mapping[str, Any]    # put: every field of the item; patch: the fields it changes (None: remove)

    @property
    def touched(self) -> set[str]:
        return set(self.fields)

    def log_document(self, received_at: datetime) -> dict:
        return {"item_id": self.item_id, "change_id": self.change_id, "op": self.op, "fields": dict(self.fields),
                "received_at": received_at.isoformat()}

    def same_as(self, logged: Mapping[str, Any]) -> bool:
        return logged.get("op") == self.op and (logged.get("fields") or {}) == dict(self.fields)

    @classmethod
    def from_log_document(cls, src: Mapping[str, Any]) -> "ItemChange":
        return cls(src["item_id"], src["change_id"], src["op"], dict(src.get("fields") or {}))


def new_change_id() -> str:
    return uuid.uuid4().hex[:16]


def check_change_id(value: Any, where: str = "change_id") -> str:
    if value is None:
        return new_change_id()
    if not isinstance(value, str) or not CHANGE_ID.fullmatch(value):
        raise BadRequest(where, "1-64 of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    return value


def item_fields_of(raw: Any, schema: CatalogSchema, where: str, partial: bool) -> dict[str, Any]:
    """An item's fields as the schema types them: ``title`` (required unless ``partial``), ``image``
    and ``url`` where the schema has them, and its facets (a facet left out of a put is absent)."""
    if not isinstance(raw, Mapping):
        raise BadRequest(where, "an object of the item's fields (title and facets)")
    allowed = {"title", *(k for k in ("image", "url") if getattr(schema.items, k)), *(f.name for f in schema.facets)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise BadRequest(f"{where}.{str(unknown[0])[:64]}", f"not a field of the catalog {schema.name!r}; its fields: "
                                                            f"{sorted(allowed)}")
    if not partial and raw.get("title") is None:
        raise BadRequest(f"{where}.title", "required (a put gives the whole item)")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        field = f"{where}.{name}"
        if value is None:
            if name == "title":
                raise BadRequest(field, "an item keeps a title")
            out[name] = None   # a patch removes the field
            continue
        if name in ("title", "image", "url"):
            limit = MAX_TITLE if name == "title" else 2048
            if not isinstance(value, str) or not value.strip() or len(value) > limit:
                raise BadRequest(field, f"a non-empty string of at most {limit} characters")
            out[name] = value
            continue
        out[name] = _facet_value(value, schema.facet(name), field)
    return out


def _facet_value(value: Any, facet, field: str) -> Any:
    if facet.type == "keyword_list":
        values = value if isinstance(value, list) else [value]
        if len(values) > 100:
            raise BadRequest(field, "at most 100 values")
        return list(dict.fromkeys(check_value(v, "keyword", field) for v in values))
    checked = check_value(value, facet.type, field)
    if facet.type == "date":
        checked = checked[:10]   # a day (what the ETL keeps)
    if facet.range and facet.type in ("integer", "float"):
        low, high = facet.range
        if (low is not None and checked < low) or (high is not None and checked > high):
            raise BadRequest(field, f"outside the catalog's range [{low}, {high}]")
    if isinstance(checked, float) and not math.isfinite(checked):
        raise BadRequest(field, "a finite number")
    return checked


def parse_change(raw: Any, schema: CatalogSchema, where: str = "change") -> ItemChange:
    """One change of a batch (``{"op", "item_id", "item", "change_id"}``)."""
    if not isinstance(raw, Mapping):
        raise BadRequest(where, 'an object {"op": put|patch|delete, "item_id", "item", "change_id"}')
    unknown = sorted(set(raw) - {"op", "item_id", "item", "change_id"})
    if unknown:
        raise BadRequest(f"{where}.{str(unknown[0])[:64]}", "unknown field; allowed: op, item_id, item, change_id")
    op = raw.get("op")
    if op not in OPS:
        raise BadRequest(f"{where}.op", f"one of {list(OPS)}")
    item_id = check_item_id(raw.get("item_id"), f"{where}.item_id", MAX_ITEM_ID_BYTES)
    change_id = check_change_id(raw.get("change_id"), f"{where}.change_id")
    if op == "delete":
        if raw.get("item") is not None:
            raise BadRequest(f"{where}.item", "a takedown takes no fields")
        return ItemChange(item_id, change_id, op, {})
    return ItemChange(item_id, change_id, op, item_fields_of(raw.get("item"), schema, f"{where}.item", op == "patch"))
