"""A catalog's shape, declared in ONE schema file (``catalogs/<name>/catalog.yaml``), and everything
derived from it.

The file declares what a team's data looks like and what each part is for::

    name: bookstore
    items:
      id: sku                  # the input column of the item id
      title: name              # ... of the title (text)
      image: cover_url         # optional: shown by the page, returned with each item
      url: link                # optional
      categories: tags         # optional: the facet a diverse row crowds by (max_per_category)
      published: released      # optional: a date facet, the ranker's freshness
      facets:
        format:   {type: keyword, feature: true, partition: true}
        language: {type: keyword, user_filter: true}          # request parameter ?language=
        price:    {type: float, feature: true, range: [0, 10000]}
        in_stock: {type: boolean, feature: true}
        tags:     {type: keyword_list, feature: true, separator: "|"}   # the list separator in CSV input
        released: {type: date, column: release_date}
    events:
      user: customer           # the input columns of an event
      item: sku
      time: {column: at, format: iso8601}    # epoch_s | epoch_ms | iso8601
      type: {column: kind, keep: [purchase, view]}   # optional: which event types are kept
    users:                     # optional: a table of user features
      id: customer
      features: [segment]
    checks:
      max_rejected_share: 0.01  # more rejected input rows than this share fail the run
      max_id_length: 256

A facet's ``type`` is one of ``keyword``, ``keyword_list`` (several values), ``integer``, ``float``,
``date`` (a day) or ``boolean``; what it is for: ``feature`` (the item tower reads it: categorical
values are embedded, numbers and dates bucketed), ``filter`` (rows may filter on it; default true),
``user_filter`` (a caller sets it per request: ``true``, or ``{param: NAME}`` for another parameter
name), ``partition`` (each value gets a vector graph of its own), ``shown`` (returned with each item
of a response; default true), ``range`` (values outside are rejected rows), ``column`` (the input
column, default the facet's name).

From it, here and nowhere else: the ETL's columns and casts (``ingest.embedding.etl``), the model's
item features, the item index mapping (``item_properties``, ``dynamic: strict``), the bulk load's
fields, the fields a response item carries (``source_fields``), the row config's facets and user
filters (``facetrec.catalog.rows``), ``GET /v1/facets``, the OpenAPI document. The schema is part of
each generation: recorded in its item index's ``_meta`` (``catalog_schema``), so a pair is served
with the schema it was made with.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from facetrec.errors import ConfigurationError

FACET_TYPES = ("keyword", "keyword_list", "integer", "float", "date", "boolean")
CATEGORICAL = ("keyword", "keyword_list", "boolean")   # the item tower embeds their values
NUMERIC = ("integer", "float", "date")                 # the item tower embeds their quantile bucket
TIME_FORMATS = ("epoch_s", "epoch_ms", "iso8601")
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Fields every item document has besides its facets (the index template's own properties).
RESERVED = ("item_id", "title", "image", "url", "popularity", "generation", "item_embed", "item_embed_exact")
DEFAULT_BUCKETS = 16
ES_TYPES = {"keyword": "keyword", "keyword_list": "keyword", "integer": "long", "float": "float",
            "date": "date", "boolean": "boolean"}


class SchemaError(ConfigurationError):
    """The catalog schema file cannot be used; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class Facet:
    name: str                    # the field in the index and in row filters
    type: str                    # one of FACET_TYPES
    column: str                  # the input column
    feature: bool = False        # the item tower reads it
    filter: bool = True          # rows may filter on it
    user_filter: str | None = None   # the request parameter of a user filter (None: not one)
    partition: bool = False      # each value gets a vector graph of its own
    shown: bool = True           # returned with each item of a response
    range: tuple[float | None, float | None] | None = None   # values outside are rejected rows
    separator: str | None = None     # keyword_list in a CSV input: the separator inside the cell
    buckets: int = DEFAULT_BUCKETS   # numeric and date features: quantile buckets

    @property
    def categorical(self) -> bool:
        return self.type in CATEGORICAL

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"type": self.type, "column": self.column}
        for key in ("feature", "filter", "partition", "shown", "range", "separator", "buckets"):
            value = getattr(self, key)
            default = Facet.__dataclass_fields__[key].default
            if value != default:
                out[key] = list(value) if isinstance(value, tuple) else value
        if self.user_filter:
            out["user_filter"] = True if self.user_filter == self.name else {"param": self.user_filter}
        return out


@dataclasses.dataclass(frozen=True)
class ItemColumns:
    id: str = "item_id"
    title: str = "title"
    image: str | None = None
    url: str | None = None
    categories: str | None = None    # the facet diversity crowds by
    published: str | None = None     # the date facet the ranker's freshness reads


@dataclasses.dataclass(frozen=True)
class EventColumns:
    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    time_format: str = "epoch_s"
    type: str | None = None          # the event type column (None: every event counts)
    keep: tuple[str, ...] | None = None   # the event types kept (None: all)


@dataclasses.dataclass(frozen=True)
class UserColumns:
    id: str = "user_id"
    features: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Checks:
    max_rejected_share: float = 0.01  # of an input's rows; more fails the run before anything is published
    max_id_length: int = 256
    sample_rows: int = 20             # rejected rows kept per reason, beside the run's report


@dataclasses.dataclass(frozen=True)
class CatalogSchema:
    name: str
    facets: tuple[Facet, ...]
    items: ItemColumns = ItemColumns()
    events: EventColumns = EventColumns()
    users: UserColumns = UserColumns()
    checks: Checks = Checks()
    source: str = "catalog schema"

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "CatalogSchema":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SchemaError(f"{path}: cannot read the catalog schema ({exc})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "catalog schema") -> "CatalogSchema":
        return _parse(raw, source)

    @classmethod
    def from_json(cls, text: str, source: str = "a generation's _meta") -> "CatalogSchema":
        return cls.from_dict(json.loads(text), source)

    def to_dict(self) -> dict:
        """The canonical form (what a generation records): ``from_dict(to_dict())`` gives the same schema."""
        items = {k: v for k, v in dataclasses.asdict(self.items).items() if v is not None}
        items["facets"] = {f.name: f.to_dict() for f in self.facets}
        events: dict[str, Any] = {"user": self.events.user, "item": self.events.item,
                                  "time": {"column": self.events.time, "format": self.events.time_format}}
        if self.events.type:
            events["type"] = {"column": self.events.type, **({"keep": list(self.events.keep)} if self.events.keep
                                                            else {})}
        return {"name": self.name, "items": items, "events": events,
                "users": {"id": self.users.id, "features": list(self.users.features)},
                "checks": dataclasses.asdict(self.checks)}

    def to_json(self) -> str:
        """The canonical form as JSON, in declaration order (a generation records it so)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    # ---- derived -------------------------------------------------------------------------------
    def facet(self, name: str) -> Facet | None:
        return next((f for f in self.facets if f.name == name), None)

    @property
    def facet_types(self) -> dict[str, str]:
        """The facets rows may filter on, with their types (what the row config is validated against)."""
        return {f.name: f.type for f in self.facets if f.filter}

    @property
    def user_filters(self) -> tuple[str, ...]:
        """The facets a caller sets per request."""
        return tuple(f.name for f in self.facets if f.user_filter)

    @property
    def user_filter_params(self) -> dict[str, str]:
        """Request parameter -> the facet it filters."""
        return {f.user_filter: f.name for f in self.facets if f.user_filter}

    @property
    def feature_facets(self) -> tuple[Facet, ...]:
        """The facets the item tower reads, in declaration order."""
        return tuple(f for f in self.facets if f.feature)

    @property
    def partition_facets(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.facets if f.partition)

    @property
    def display_fields(self) -> list[str]:
        """What each item of a response carries besides its id and score."""
        return ["title", *(k for k in ("image", "url") if getattr(self.items, k)),
                *(f.name for f in self.facets if f.shown)]

    @property
    def source_fields(self) -> list[str]:
        """The ``_source`` a row's search asks for: the displayed fields, and what the service reads."""
        return ["item_id", *self.display_fields, "popularity", "generation"]

    def item_properties(self) -> dict[str, dict]:
        """The item index mapping's properties for this catalog's own fields (the facets, image, url);
        the index template holds the rest (``dynamic: strict``: nothing else is accepted)."""
        props: dict[str, dict] = {}
        for key in ("image", "url"):
            if getattr(self.items, key):
                props[key] = {"type": "keyword", "index": False}   # doc values: a hit's fields (hit_fields)
        for f in self.facets:
            prop: dict[str, Any] = {"type": ES_TYPES[f.type]}
            if f.type == "date":
                prop["format"] = "strict_date_optional_time||epoch_millis"
            if not f.filter and not f.feature:
                prop.update(index=False)
            props[f.name] = prop
        return props


def _parse(raw: Any, source: str) -> CatalogSchema:
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{source}: expected a mapping with name, items, events")
    _only(raw, ("name", "items", "events", "users", "checks"), source)
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise SchemaError(f"{source}: name: 1-64 letters, digits, '.', '_' or '-'")
    items_raw = raw.get("items")
    if not isinstance(items_raw, Mapping):
        raise SchemaError(f"{source}: items: a mapping (id, title, facets, ...)")
    _only(items_raw, ("id", "title", "image", "url", "categories", "published", "facets"), f"{source}: items")
    facets = tuple(_facet(n, spec, f"{source}: items.facets.{n}") for n, spec in (items_raw.get("facets") or {}).items())
    items = ItemColumns(**{k: _column(items_raw.get(k, default), f"{source}: items.{k}", optional=default is None)
                           for k, default in (("id", "item_id"), ("title", "title"), ("image", None), ("url", None),
                                              ("categories", None), ("published", None))})
    names = [f.name for f in facets]
    if len(set(names)) != len(names):
        raise SchemaError(f"{source}: items.facets: a facet is declared twice")
    params = [f.user_filter for f in facets if f.user_filter]
    if len(set(params)) != len(params):
        raise SchemaError(f"{source}: two user filters share a request parameter")
    if items.categories and (items.categories not in names or
                             next(f for f in facets if f.name == items.categories).type not in ("keyword",
                                                                                               "keyword_list")):
        raise SchemaError(f"{source}: items.categories: {items.categories!r} must be a keyword or keyword_list facet")
    if items.published and (items.published not in names or
                            next(f for f in facets if f.name == items.published).type != "date"):
        raise SchemaError(f"{source}: items.published: {items.published!r} must be a date facet")
    return CatalogSchema(name=name, facets=facets, items=items, events=_events(raw.get("events"), source),
                         users=_users(raw.get("users"), source), checks=_checks(raw.get("checks"), source),
                         source=source)


def _only(raw: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise SchemaError(f"{where}: unknown entry {unknown[0]!r}; allowed: {list(allowed)}")


def _column(value: Any, where: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise SchemaError(f"{where}: the name of an input column")
    return value


def _facet(name: Any, spec: Any, where: str) -> Facet:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED:
        raise SchemaError(f"{where}: a facet name is 1-64 of a-z, 0-9, '_' (starting with a letter), not one of "
                          f"{list(RESERVED)}")
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise SchemaError(f"{where}: a type ({list(FACET_TYPES)}) or a mapping with one")
    _only(spec, ("type", "column", "feature", "filter", "user_filter", "partition", "shown", "range", "separator",
                 "buckets"), where)
    kind = spec.get("type")
    if kind not in FACET_TYPES:
        raise SchemaError(f"{where}.type: one of {list(FACET_TYPES)}, not {kind!r}")
    flags = {}
    for key, default in (("feature", False), ("filter", True), ("partition", False), ("shown", True)):
        value = spec.get(key, default)
        if not isinstance(value, bool):
            raise SchemaError(f"{where}.{key}: true or false")
        flags[key] = value
    param = _user_filter_param(spec.get("user_filter", False), name, where)
    if param and kind not in ("keyword", "keyword_list", "boolean", "integer"):
        raise SchemaError(f"{where}.user_filter: a user filter is a keyword, keyword_list, boolean or integer facet")
    if flags["partition"] and kind not in ("keyword", "keyword_list"):
        raise SchemaError(f"{where}.partition: only keyword facets get a vector graph per value")
    if param and not flags["filter"]:
        raise SchemaError(f"{where}: a user filter filters rows (filter: true)")
    bounds = _range(spec.get("range"), kind, where)
    separator = spec.get("separator")
    if separator is not None and (kind != "keyword_list" or not isinstance(separator, str) or len(separator) != 1):
        raise SchemaError(f"{where}.separator: one character, for a keyword_list facet")
    buckets = spec.get("buckets", DEFAULT_BUCKETS)
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 2 <= buckets <= 256:
        raise SchemaError(f"{where}.buckets: an integer in 2..256")
    return Facet(name=name, type=kind, column=_column(spec.get("column", name), f"{where}.column"),
                 user_filter=param, range=bounds, separator=separator, buckets=buckets, **flags)


def _user_filter_param(raw: Any, name: str, where: str) -> str | None:
    if isinstance(raw, Mapping) and set(raw) == {"param"} and isinstance(raw["param"], str) \
            and NAME.fullmatch(raw["param"]):
        return raw["param"]
    if isinstance(raw, bool):
        return name if raw else None
    raise SchemaError(f"{where}.user_filter: true, false, or {{param: NAME}}")


def _range(bounds: Any, kind: str, where: str) -> tuple[float | None, float | None] | None:
    if bounds is None:
        return None
    if kind not in ("integer", "float") or not isinstance(bounds, list) or len(bounds) != 2 or not all(
            b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)) for b in bounds) \
            or (None not in bounds and bounds[0] > bounds[1]):
        raise SchemaError(f"{where}.range: [low, high] of a numeric facet (either may be null)")
    return bounds[0], bounds[1]


def _events(raw: Any, source: str) -> EventColumns:
    if raw is None:
        return EventColumns()
    where = f"{source}: events"
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{where}: a mapping (user, item, time, type)")
    _only(raw, ("user", "item", "time", "type"), where)
    time = raw.get("time", "timestamp")
    if isinstance(time, str):
        time = {"column": time}
    if not isinstance(time, Mapping):
        raise SchemaError(f"{where}.time: a column name, or {{column, format}}")
    _only(time, ("column", "format"), f"{where}.time")
    time_format = time.get("format", "epoch_s")
    if time_format not in TIME_FORMATS:
        raise SchemaError(f"{where}.time.format: one of {list(TIME_FORMATS)}")
    kind = raw.get("type")
    if isinstance(kind, str):
        kind = {"column": kind}
    if kind is not None and not isinstance(kind, Mapping):
        raise SchemaError(f"{where}.type: a column name, or {{column, keep: [...]}}")
    keep = None
    if kind is not None:
        _only(kind, ("column", "keep"), f"{where}.type")
        keep = kind.get("keep")
        if keep is not None and (not isinstance(keep, list) or not keep or not all(isinstance(k, str) for k in keep)):
            raise SchemaError(f"{where}.type.keep: a list of event types")
    return EventColumns(user=_column(raw.get("user", "user_id"), f"{where}.user"),
                        item=_column(raw.get("item", "item_id"), f"{where}.item"),
                        time=_column(time.get("column", "timestamp"), f"{where}.time.column"), time_format=time_format,
                        type=_column(kind.get("column"), f"{where}.type.column") if kind else None,
                        keep=tuple(keep) if keep else None)


def _users(raw: Any, source: str) -> UserColumns:
    if raw is None:
        return UserColumns()
    where = f"{source}: users"
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{where}: a mapping (id, features)")
    _only(raw, ("id", "features"), where)
    features = raw.get("features") or []
    if not isinstance(features, list):
        raise SchemaError(f"{where}.features: a list of input columns")
    return UserColumns(id=_column(raw.get("id", "user_id"), f"{where}.id"),
                       features=tuple(_column(c, f"{where}.features") for c in features))


def _checks(raw: Any, source: str) -> Checks:
    if raw is None:
        return Checks()
    where = f"{source}: checks"
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{where}: a mapping")
    _only(raw, ("max_rejected_share", "max_id_length", "sample_rows"), where)
    share = raw.get("max_rejected_share", Checks.max_rejected_share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise SchemaError(f"{where}.max_rejected_share: a share in 0..1")
    length = raw.get("max_id_length", Checks.max_id_length)
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512:
        raise SchemaError(f"{where}.max_id_length: an integer in 1..512 (Elasticsearch's _id limit is 512 bytes)")
    sample = raw.get("sample_rows", Checks.sample_rows)
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= 1000:
        raise SchemaError(f"{where}.sample_rows: an integer in 0..1000")
    return Checks(max_rejected_share=float(share), max_id_length=length, sample_rows=sample)
