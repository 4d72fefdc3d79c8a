"""Vector partitions: one more vector field per value of a partitioned facet.

A facet declared partitioned (``FACETREC_VECTOR_PARTITIONS``, e.g. ``item_format``) gets, in every
item generation, one graph field per value that holds only that value's item vectors. A row whose
filter pins that value (``{term: {item_format: audiobook}}``) walks that small graph with only its
remaining filters (the user facets), instead of walking the graph of the whole catalog with the
value inside the filter (where a filtered walk both costs more and misses more: measured in
``docs/benchmarks.md``). The planner (``facetrec.serving.planner``) decides per request.

Which values get a field is decided at publish from the counts of the values in the new items: a
value with fewer than ``FACETREC_PARTITION_MIN_DOCS`` items gets none (a row on it is small enough
to scan exactly), and a facet with more than ``MAX_VALUES_PER_FACET`` such values is refused (every
value is a field in the mapping). The choice is recorded in the item index's ``_meta``
(``partitions``: facet -> value -> {field, docs}), and the service reads it per generation, so a
rollback to a generation made without partitions (or with other ones) is served as it was made.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Mapping

from facetrec.errors import ConfigurationError

MAX_VALUES_PER_FACET = 64
MAX_COVERING_VALUES = 8      # a row that does not pin the facet walks every one of its partitions
FIELD_PREFIX = "item_embed_by"   # item_embed_by__<facet>__<value slug>_<hash>


class PartitionError(ConfigurationError):
    """The partition configuration cannot be used (the message names the facet)."""


def partition_field(facet: str, value: str) -> str:
    """The vector field of one facet value: readable, a valid field name whatever the value holds,
    and distinct for distinct (facet, value) pairs (a short hash of both, exactly as written)."""
    slug = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")[:40] or "value"
    digest = hashlib.sha1(f"{facet}\0{value}".encode()).hexdigest()[:8]
    return f"{FIELD_PREFIX}__{facet}__{slug}_{digest}"


def choose(facets: Iterable[str], value_counts: Mapping[str, Mapping[str, int]], min_docs: int) -> dict:
    """The partitions of a new item generation: facet -> value -> {"field", "docs"} for every value
    with at least ``min_docs`` items. Raises PartitionError for a facet with too many such values."""
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for facet in facets:
        counts = value_counts.get(facet) or {}
        values = {value: int(n) for value, n in counts.items() if int(n) >= min_docs}
        if len(values) > MAX_VALUES_PER_FACET:
            raise PartitionError(
                f"FACETREC_VECTOR_PARTITIONS: facet {facet!r} has {len(values)} values with at least {min_docs} items; "
                f"at most {MAX_VALUES_PER_FACET} can be partitioned (each is a vector field): raise "
                "FACETREC_PARTITION_MIN_DOCS or partition another facet")
        chosen[facet] = {value: {"field": partition_field(facet, value), "docs": n}
                         for value, n in sorted(values.items())}
    return chosen


def covering(partitions: Mapping[str, Mapping[str, Any]], value_counts: Mapping[str, Any],
             max_values: int = MAX_COVERING_VALUES) -> str | None:
    """The first partitioned facet whose partitions hold every item exactly once (each record has
    one value, and every value has a partition), with at most ``max_values`` values; None when none
    does. Then the whole catalog's graph is the union of that facet's partition graphs, and a
    generation need not build one (``FACETREC_CATALOG_GRAPH``). ``value_counts`` are
    ``ingest.indexing.records.ValueCounts`` (with ``records`` and ``single``)."""
    for facet, by_value in partitions.items():
        counts = value_counts.get(facet)
        if counts is None or not by_value or len(by_value) > max_values:
            continue
        records = getattr(counts, "records", None)
        if records and getattr(counts, "single", None) == records and set(counts) == set(by_value):
            return facet
    return None


def fields(partitions: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Every partition field of a generation, in a stable order."""
    return [entry["field"] for facet in sorted(partitions) for _, entry in sorted(partitions[facet].items())]


def document_fields(record: Mapping[str, Any], partitions: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """The partition fields one item's vector goes into: one per partitioned value it has (a
    multi-valued facet can put it in several)."""
    out = []
    for facet, by_value in partitions.items():
        value = record.get(facet)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else (value.tolist() if hasattr(value, "tolist") else [value])
        if isinstance(values, str):
            values = [values]
        for v in dict.fromkeys(str(x) for x in values):
            entry = by_value.get(v)
            if entry is not None:
                out.append(entry["field"])
    return out
