"""What a caller may ask of each configured row: the body of ``GET /v1/rows`` and the page's controls.

Pure functions over a RowCatalog (the live facet values come from ``facetrec.catalog.facets``).
"""

from __future__ import annotations

from typing import Iterable

from facetrec.catalog.rows import Row, RowCatalog


def row_modes(row: Row, default_mode: str) -> list[str]:
    """The retrieval modes a caller may ask of ``row``: its own (or the service's default) and its
    ``caller_modes``; the row's own first."""
    own = row.retrieval or default_mode
    return [own, *sorted(set(row.caller_modes) - {own})]


def common_modes(rows: Iterable[Row], default_mode: str) -> list[str]:
    """The modes every one of ``rows`` allows (``mode`` applies to all rows of a request)."""
    rows = list(rows)
    if not rows:
        return [default_mode]
    allowed = set(row_modes(rows[0], default_mode))
    for row in rows[1:]:
        allowed &= set(row_modes(row, default_mode))
    return sorted(allowed, key=lambda m: (m != default_mode, m))


def describe_row(row: Row, default_mode: str, on_homepage: bool) -> dict:
    entry = {"id": row.id, "title": row.title, "size": row.size, "max_size": row.size_limit,
             "modes": row_modes(row, default_mode), "filter": list(row.filter), "must_not": list(row.must_not),
             "on_homepage": on_homepage}
    if row.exact:
        entry["exact"] = True
    if row.diversity is not None:
        entry["diversity"] = True
    if row.rank_candidates:
        entry["rank_candidates"] = row.rank_candidates
    return entry


def describe_catalog(catalog: RowCatalog, default_mode: str) -> dict:
    """The configured part of ``GET /v1/rows`` (the facets are added by the view)."""
    return {"homepage": list(catalog.homepage), "user_filters": list(catalog.user_filter_params),
            "default_mode": default_mode,
            "homepage_modes": common_modes(catalog.homepage_rows(), default_mode),
            "rows": [describe_row(r, default_mode, r.id in catalog.homepage) for r in catalog.rows.values()]}


def mode_options(rows: Iterable[Row], default_mode: str) -> list[tuple[str, str]]:
    """(value, label) of the modes a page of ``rows`` may be asked in; value "" sends no ``mode``
    (each row's own). A mode is offered only when every row allows it."""
    rows = list(rows)
    own = {row.retrieval or default_mode for row in rows}
    common = common_modes(rows, default_mode)
    if len(own) == 1:   # no mode is the same as that one
        (mode,) = own
        return [("", mode), *((m, m) for m in common if m != mode)]
    return [("", "each row's own"), *((m, m) for m in common)]


def clause_text(clause: dict) -> str:
    """One validated filter clause as a short phrase: ``categories = Comedy``, ``published_at < 1980-01-01``."""
    (kind, body), = clause.items()
    (name, value), = body.items()
    if kind == "term":
        return f"{name} = {value}"
    if kind == "terms":
        return f"{name} in {', '.join(map(str, value))}"
    ops = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
    return " and ".join(f"{name} {ops[op]} {bound}" for op, bound in value.items() if op in ops)


def filter_text(row: Row) -> str:
    """A row's filters as one phrase (empty for a row over the whole catalog)."""
    parts = [clause_text(c) for c in row.filter] + [f"not {clause_text(c)}" for c in row.must_not]
    return "; ".join(parts)
