"""Homepage rows: the row config, its validation, and each row's filter.

Shared by the service (one ``_msearch`` per homepage), the row counts of each generation, and the
re-index validation gate (every row must return items against a new generation before the aliases
move). How a row becomes a search is ``facetrec.serving.row_queries``.

A row config file (YAML or JSON; ``rows.yaml`` beside its catalog's ``catalog.yaml``, which declares
the facets rows filter on and the user filters: ``facetrec.catalog.schema``)::

    rows:
      - id: audiobooks
        title: Audiobooks for you
        size: 10
        filter:   [{term: {item_format: audiobook}}]
        must_not: [{terms: {categories: [horror]}}]
        retrieval: knn        # optional: knn | script_score (default: settings.retrieval_mode)
        num_candidates_factor: 30   # optional: knn candidates per neighbour when the row walks the graph
                                    # with its filter inside (plan filtered_graph; default: the setting)
        plan: exact           # optional: pin how the row is searched (exact | partition | post_filter |
                              # filtered_graph; default: the planner chooses per request, facetrec.serving.planner);
                              # `exact: true` is the older spelling of `plan: exact`
        diversity: {max_per_category: 2, mmr_lambda: 0.7, candidates_factor: 3}   # optional (facetrec.serving.diversity)
        rank: {candidates: 100}   # optional: the pair's learned ranker re-sorts this many retrieved
                                  # candidates before the row keeps its size (facetrec.model.ranker)
    homepage: [for_you, audiobooks]
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from facetrec.catalog.diversity_policy import DiversityPolicy
from facetrec.catalog.schema import CatalogSchema
from facetrec.errors import BadRequest, ConfigurationError
from facetrec.settings import RETRIEVAL_MODES, Settings

ROW_PLANS = ("exact", "partition", "post_filter", "filtered_graph")   # facetrec.serving.planner
CLAUSES = ("term", "terms", "range")
RANGE_OPS = ("gt", "gte", "lt", "lte")
MAX_ROW_SIZE = 100
MAX_RANK_CANDIDATES = 500     # the most candidates a ranked row retrieves for its ranker
MAX_PAGE_HITS = 200           # items one request may ask for over all its rows
# Dates: validated and sent to Elasticsearch with ONE explicit format, so what passes filters as written.
DATE_FORMAT = "strict_date_optional_time"
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?")


class RowConfigError(ConfigurationError):
    """The row configuration is invalid; the message names the row and field."""


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    title: str
    size: int = 10
    filter: tuple[dict, ...] = ()
    must_not: tuple[dict, ...] = ()
    retrieval: str | None = None
    caller_modes: tuple[str, ...] = ()   # modes a caller may ask for besides the row's own
    max_size: int | None = None          # the largest size a caller may ask for (default: 2 x size)
    num_candidates_factor: int | None = None  # knn candidates = k x this (default: the setting)
    plan: str | None = None              # a pinned plan (facetrec.serving.planner.PLANS); None: chosen per request
    diversity: DiversityPolicy | None = None  # crowding / MMR over over-fetched candidates (facetrec.serving.diversity)
    rank_candidates: int | None = None   # `rank: {candidates}`: retrieved candidates the ranker re-sorts

    def candidates(self, size: int) -> int:
        """Hits the row retrieves for ``size`` shown items: its size, a diverse row's candidates, or a
        ranked row's (whichever is most)."""
        return max(size * (self.diversity.candidates_factor if self.diversity else 1), self.rank_candidates or 0)

    @property
    def exact(self) -> bool:
        return self.plan == "exact"

    @property
    def size_limit(self) -> int:
        return size_limit(self.size, self.max_size)


SCHEMA_FILE = "catalog.yaml"   # a row config's catalog schema, beside it


@dataclasses.dataclass(frozen=True)
class RowCatalog:
    """The configured rows, with the facets they may filter on and the user filters: those of the
    catalog schema (``schema``; the live generation's once the service has read it)."""
    facets: dict[str, str]
    user_filters: tuple[str, ...]
    rows: dict[str, Row]
    homepage: tuple[str, ...]
    schema: CatalogSchema | None = None

    @classmethod
    def load(cls, path: Path, schema: CatalogSchema | None = None) -> "RowCatalog":
        """A row config file, with the catalog schema ``schema`` or else the ``catalog.yaml`` beside it."""
        path = Path(path)
        if schema is None:
            beside = path.parent / SCHEMA_FILE
            if not beside.is_file():
                raise RowConfigError(f"{path}: no catalog schema: put the catalog's {SCHEMA_FILE} beside the row "
                                     "config, or name it (FACETREC_CATALOG_CONFIG, --catalog-config)")
            schema = CatalogSchema.load(beside)
        text = path.read_text()
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.from_dict(raw, schema, source=str(path))

    @classmethod
    def from_settings(cls, settings: Settings) -> "RowCatalog":
        """The configured row config (FACETREC_ROWS_CONFIG) over the configured catalog schema
        (FACETREC_CATALOG_CONFIG, else the ``catalog.yaml`` beside the row config)."""
        schema = CatalogSchema.load(settings.catalog_config) if settings.catalog_config else None
        return cls.load(settings.rows_config, schema)

    @classmethod
    def from_dict(cls, raw: dict, schema: CatalogSchema | None = None, source: str = "rows config") -> "RowCatalog":
        """Rows over ``schema``'s facets (None: a catalog without facets: rows without filters)."""
        if not isinstance(raw, dict):
            raise RowConfigError(f"{source}: expected a mapping at the top level")
        moved = sorted({"facets", "user_filters"} & set(raw))
        if moved:
            raise RowConfigError(f"{source}: {moved[0]} are declared in the catalog schema ({SCHEMA_FILE}), not in "
                                 "the row config")
        facets = schema.facet_types if schema else {}
        user_filters = schema.user_filters if schema else ()
        default_caller_modes = _modes(raw.get("caller_modes") or [], f"{source}: caller_modes")
        rows: dict[str, Row] = {}
        for entry in raw.get("rows") or []:
            row = _parse_row(entry, facets, source, default_caller_modes)
            if row.diversity and row.diversity.max_per_category and not (schema and schema.items.categories):
                raise RowConfigError(f"{source}: row {row.id!r}: max_per_category needs the catalog's category facet "
                                     f"(items.categories in {SCHEMA_FILE})")
            if row.id in rows:
                raise RowConfigError(f"{source}: duplicate row id {row.id!r}")
            rows[row.id] = row
        homepage = tuple(raw.get("homepage") or rows.keys())
        for row_id in homepage:
            if row_id not in rows:
                raise RowConfigError(f"{source}: homepage names unknown row {row_id!r}")
        if not homepage:
            raise RowConfigError(f"{source}: no rows configured")
        page_size = sum(rows[row_id].size for row_id in homepage)
        if page_size > MAX_PAGE_HITS:   # every plain homepage call would be refused
            raise RowConfigError(f"{source}: the homepage's rows hold {page_size} items at their sizes; a request "
                                 f"asks for at most {MAX_PAGE_HITS}: fewer rows on the homepage, or smaller sizes")
        return cls(facets=facets, user_filters=user_filters, rows=rows, homepage=homepage, schema=schema)

    def homepage_rows(self) -> list[Row]:
        return [self.rows[row_id] for row_id in self.homepage]

    @property
    def user_filter_params(self) -> dict[str, str]:
        """A user filter's request parameter -> the facet it filters."""
        return self.schema.user_filter_params if self.schema else {}

    def with_schema(self, schema: CatalogSchema) -> "RowCatalog":
        """The same rows over another schema's facets and user filters (the live generation's)."""
        return dataclasses.replace(self, facets=schema.facet_types, user_filters=schema.user_filters, schema=schema)

    def unservable(self, schema: CatalogSchema) -> list[str]:
        """Why ``schema`` (a generation's) cannot serve these rows: each filter on a facet it lacks or
        holds with another type (empty: it can)."""
        problems = []
        for row in self.rows.values():
            for clause in (*row.filter, *row.must_not):
                (_, body), = clause.items()
                (name, _), = body.items()
                kind = schema.facet_types.get(name)
                if kind is None:
                    problems.append(f"row {row.id!r} filters on {name!r}, which the generation's catalog "
                                    f"{schema.name!r} does not have")
                elif kind != self.facets.get(name):
                    problems.append(f"row {row.id!r} filters on {name!r} as {self.facets.get(name)}, the "
                                    f"generation's catalog has it as {kind}")
        return problems


def _modes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(m not in RETRIEVAL_MODES for m in value):
        raise RowConfigError(f"{where}: a list of modes among {RETRIEVAL_MODES}")
    return tuple(value)


def _parse_row(entry: Any, facets: dict[str, str], source: str, default_caller_modes: tuple[str, ...] = ()) -> Row:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
        raise RowConfigError(f"{source}: every row needs a non-empty string id, got {entry!r}")
    where = f"{source}: row {entry['id']!r}"
    size = entry.get("size", 10)
    if not isinstance(size, int) or not 1 <= size <= MAX_ROW_SIZE:
        raise RowConfigError(f"{where}: size must be an integer in 1..{MAX_ROW_SIZE}")
    retrieval = entry.get("retrieval")
    if retrieval is not None and retrieval not in RETRIEVAL_MODES:
        raise RowConfigError(f"{where}: retrieval must be one of {RETRIEVAL_MODES}")
    clauses = {}
    for key in ("filter", "must_not"):
        try:
            clauses[key] = tuple(validate_clause(c, facets) for c in entry.get(key) or [])
        except BadRequest as exc:
            raise RowConfigError(f"{where}: {key}: {exc}") from None
    max_size = entry.get("max_size")
    if max_size is not None and (not isinstance(max_size, int) or not size <= max_size <= MAX_ROW_SIZE):
        raise RowConfigError(f"{where}: max_size must be an integer in size..{MAX_ROW_SIZE}")
    caller_modes = _modes(entry["caller_modes"], f"{where}: caller_modes") if "caller_modes" in entry \
        else default_caller_modes
    factor = entry.get("num_candidates_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 1000):
        raise RowConfigError(f"{where}: num_candidates_factor must be an integer in 1..1000")
    exact = entry.get("exact", False)
    if not isinstance(exact, bool):
        raise RowConfigError(f"{where}: exact must be true or false")
    plan = entry.get("plan")
    if plan is not None and plan not in ROW_PLANS:
        raise RowConfigError(f"{where}: plan must be one of {ROW_PLANS}")
    if exact and plan not in (None, "exact"):
        raise RowConfigError(f"{where}: exact: true pins plan exact; it contradicts plan: {plan}")
    policy = None
    if "diversity" in entry:
        try:
            policy = DiversityPolicy.parse(entry["diversity"])
        except ValueError as exc:
            raise RowConfigError(f"{where}: {exc}") from None
    return Row(id=entry["id"], title=str(entry.get("title") or entry["id"]), size=size,
               filter=clauses["filter"], must_not=clauses["must_not"], retrieval=retrieval,
               caller_modes=caller_modes, max_size=max_size, num_candidates_factor=factor,
               plan="exact" if exact else plan, diversity=policy,
               rank_candidates=_rank_candidates(entry["rank"], where, size_limit(size, max_size))
               if "rank" in entry else None)


def size_limit(size: int, max_size: int | None) -> int:
    """The largest size a caller may ask of a row: its max_size, or twice its size (at most MAX_ROW_SIZE)."""
    return max_size or min(2 * size, MAX_ROW_SIZE)


def _rank_candidates(raw: Any, where: str, size: int) -> int:
    if not isinstance(raw, dict) or set(raw) != {"candidates"}:
        raise RowConfigError(f"{where}: rank must be a mapping {{candidates: N}}")
    value = raw["candidates"]
    if isinstance(value, bool) or not isinstance(value, int) or not size <= value <= MAX_RANK_CANDIDATES:
        raise RowConfigError(f"{where}: rank.candidates must be an integer in {size}..{MAX_RANK_CANDIDATES} "
                             "(at least the largest size a caller may ask for: max_size, or twice the size)")
    return value


def validate_clause(clause: Any, facets: dict[str, str], field_prefix: str = "filter") -> dict:
    """Check one term/terms/range clause against the declared facets and return a clean copy.

    Values only ever become term values or range bounds in the query body; nothing is ever
    concatenated into a script or a query string.
    """
    if not isinstance(clause, dict) or len(clause) != 1:
        raise BadRequest(field_prefix, "a filter is one of {term|terms|range: {field: value}}")
    (kind, body), = clause.items()
    if kind not in CLAUSES or not isinstance(body, dict) or len(body) != 1:
        raise BadRequest(field_prefix, f"unsupported filter {kind!r}; use term, terms or range on one field")
    (name, value), = body.items()
    if name not in facets:
        raise BadRequest(f"{field_prefix}.{name}", f"unknown facet; known facets: {sorted(facets)}")
    kind_of = facets[name]
    where = f"{field_prefix}.{name}"
    if kind == "term":
        return {"term": {name: check_value(value, kind_of, where)}}
    if kind == "terms":
        if not isinstance(value, list) or not 1 <= len(value) <= 100:
            raise BadRequest(where, "terms needs a list of 1..100 values")
        return {"terms": {name: [check_value(v, kind_of, where) for v in value]}}
    if not isinstance(value, dict) or not value or set(value) - set(RANGE_OPS):
        raise BadRequest(where, f"range needs bounds among {RANGE_OPS}")
    if kind_of not in ("integer", "float", "date"):
        raise BadRequest(where, "range filters apply to numeric or date facets only")
    bounds: dict[str, Any] = {op: check_value(v, kind_of, where) for op, v in value.items()}
    if kind_of == "date":
        bounds["format"] = DATE_FORMAT  # Elasticsearch reads the bounds exactly as validated
    return {"range": {name: bounds}}


def check_value(value: Any, kind: str, where: str) -> Any:
    """A filter value of a facet of type ``kind`` (``facetrec.catalog.schema.FACET_TYPES``), or BadRequest."""
    if kind == "boolean":
        if not isinstance(value, bool):
            raise BadRequest(where, "expected true or false (a JSON boolean)")
        return value
    if kind in ("keyword", "keyword_list"):
        if not isinstance(value, str) or not value or len(value) > 256:
            raise BadRequest(where, "expected a non-empty string of at most 256 characters")
        if any(ord(ch) < 32 for ch in value):
            raise BadRequest(where, "control characters are not allowed")
        return value
    if kind in ("float", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(where, f"expected a finite number ({kind})")
        if kind == "integer" and not float(value).is_integer():
            raise BadRequest(where, "expected an integer")
        return value
    if kind == "date":
        from datetime import date, datetime
        message = "expected a date yyyy-MM-dd, optionally with time THH:mm[:ss[.fraction]][Z|+hh:mm]"
        if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
            raise BadRequest(where, message)
        try:
            (datetime if "T" in value else date).fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(where, message) from None
        return value
    raise BadRequest(where, f"unsupported facet type {kind}")


def row_filter(row: Row, user_filters: Sequence[dict], exclude_ids: Sequence[str] = ()) -> dict:
    """The pre-filter of one row: user filters AND row filters, minus exclusions (distinct ids)."""
    must_not = list(row.must_not) + ([{"ids": {"values": exclude_ids}}] if exclude_ids else [])
    return {"bool": {"filter": [*user_filters, *row.filter], "must_not": must_not}}
