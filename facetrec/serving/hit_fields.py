"""How a row's hits carry the fields a response renders (title, image, url, the shown facets) and
what the service reads (item id, popularity, generation).

An item generation made since the display fields have doc values (``DOC_VALUES_META`` in its
``_meta``) is asked for them as ``docvalue_fields``, with ``stored_fields: _none_``: a hit then costs
a few columnar reads instead of decompressing its stored-field block and filtering its ``_source``
(measured: about 3 ms of a 1M homepage's node CPU, docs/benchmarks.md). Older generations (a
rollback target) are asked for ``_source`` as before. ``HitFields.hit`` turns either answer into the
one shape the rest of the service reads: ``{"_id", "_index", "_score", "_source": {field: value}}``,
lazily (``ShapedHits``): a row asks for more hits than it shows (to backfill after de-duplication),
and only those a row reaches are turned.

Doc values hold what was indexed: a keyword list comes back sorted and without repeats, a date as
the day, a ``float`` facet as the nearest 32-bit float (rounded back to 7 significant digits here);
a title longer than the ``title.keyword`` limit (``TITLE_DOC_VALUES_LIMIT``) would come back
without it, so longer titles are refused at load.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

from facetrec.catalog.fields import BASE_SOURCE_FIELDS, ITEM_VECTOR_FIELD

DOC_VALUES_META = "display_doc_values"   # an item generation's _meta flag: its display fields have doc values
TITLE_DOC_VALUES_FIELD = "title.keyword"
TITLE_DOC_VALUES_LIMIT = 8191            # title.keyword's ignore_above (characters)
DAY_FORMAT = "yyyy-MM-dd"
SERVICE_FIELDS = {"item_id": "keyword", "title": "keyword", "image": "keyword", "url": "keyword",
                  "popularity": "float", "generation": "keyword"}


@dataclasses.dataclass(frozen=True)
class HitFields:
    """The fields a page's hits carry, and how they are read (``doc_values``, else ``_source``)."""
    fields: tuple[str, ...]
    kinds: Mapping[str, str]           # field -> its value type (facetrec.catalog.schema.FACET_TYPES)
    doc_values: bool = False

    @classmethod
    def of(cls, schema, doc_values: bool) -> "HitFields":
        """The fields of ``schema`` (None: the base fields only), read from doc values when the
        generation has them (``doc_values``)."""
        fields = tuple(schema.source_fields) if schema is not None else BASE_SOURCE_FIELDS
        kinds = dict(SERVICE_FIELDS)
        if schema is not None:
            kinds.update({f.name: f.type for f in schema.facets})
        return cls(fields, kinds, doc_values)

    def request(self, vectors: bool = False) -> dict[str, Any]:
        """The body keys that ask a search (or a ``top_hits``) for these fields; ``vectors``: the item
        vector too (a diverse row's similarity, read from ``_source``)."""
        if not self.doc_values:
            return {"_source": [*self.fields, *([ITEM_VECTOR_FIELD] if vectors else [])]}
        asked: list[Any] = []
        for name in self.fields:
            if name == "title":
                asked.append(TITLE_DOC_VALUES_FIELD)
            elif self.kinds.get(name) == "date":
                asked.append({"field": name, "format": DAY_FORMAT})
            else:
                asked.append(name)
        if vectors:   # the vector comes with _source (and _id with it)
            return {"_source": {"includes": [ITEM_VECTOR_FIELD]}, "docvalue_fields": asked}
        return {"_source": False, "stored_fields": "_none_", "docvalue_fields": asked}

    def hit(self, hit: dict) -> dict:
        """A hit in the shape the service reads (``_id`` and ``_source``), whichever way it was read."""
        if not self.doc_values or "fields" not in hit and "_id" in hit:
            return hit
        values = hit.get("fields") or {}
        source = dict(hit.get("_source") or {})
        for name in self.fields:
            got = values.get(TITLE_DOC_VALUES_FIELD if name == "title" else name)
            if not got:
                continue
            kind = self.kinds.get(name)
            if kind == "keyword_list":
                source[name] = list(got)
            elif kind == "float":
                source[name] = float(f"{got[0]:.7g}")
            else:
                source[name] = got[0]
        item_id = hit.get("_id") or source.get("item_id")
        out = {key: value for key, value in hit.items() if key != "fields"}
        out.update(_id=item_id, _source=source)
        return out


class ShapedHits(Sequence):
    """A row's hits, each turned into the service's shape when first read (and kept); ``raw`` are the
    hits as the node sent them, for what reads only ids, scores, indices and generations."""

    def __init__(self, raw: Sequence[dict], shape: Callable[[dict], dict]):
        self.raw, self._shape, self._shaped = raw, shape, [None] * len(raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.raw)))]
        hit = self._shaped[index]
        if hit is None:
            hit = self._shaped[index] = self._shape(self.raw[index])
        return hit

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self.raw)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, ShapedHits)) else NotImplemented

    __hash__ = None   # type: ignore[assignment] - a mutable sequence's


def raw_hits(hits: Sequence[dict]) -> Sequence[dict]:
    """The hits as the node sent them (``ShapedHits.raw``), or ``hits`` themselves."""
    return hits.raw if isinstance(hits, ShapedHits) else hits


def hit_generation(hit: dict) -> str | None:
    """A hit's item generation, whichever way its fields were read."""
    generation = (hit.get("_source") or {}).get("generation")
    if generation is None:
        values = (hit.get("fields") or {}).get("generation")
        generation = values[0] if values else None
    return generation


def hit_id(hit: dict) -> str | None:
    """A hit's item id, whichever way its fields were read."""
    if "_id" in hit:
        return hit["_id"]
    ids = (hit.get("fields") or {}).get("item_id")
    return ids[0] if ids else None
