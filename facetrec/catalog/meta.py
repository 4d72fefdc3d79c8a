"""What a generation index records about itself: its mapping ``_meta``, read in ONE place.

Every item and user generation writes its facts into its mapping's ``_meta`` when it is created and
published (``ingest.indexing.generations``): its state, model version and generation id; a user
index the item generation its vectors were made for; an item index how its vectors are stored (the
reduction's scale, the flat copy, the index type, the vector partitions) and the row counts the
planner estimates from. ``read_meta`` reads one index's; ``GenerationMeta`` answers with the
defaults of generations made before a fact was recorded, so no caller normalises on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from elasticsearch import Elasticsearch

from facetrec.catalog.fields import ITEM_VECTOR_FIELD
from facetrec.catalog.schema import CatalogSchema


@dataclasses.dataclass(frozen=True)
class GenerationMeta:
    index: str                          # the concrete index
    raw: Mapping[str, Any]              # the ``_meta`` as stored
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # the mapping's fields

    @property
    def state(self) -> str:
        return self.raw.get("state", "unknown")

    @property
    def model_version(self) -> str | None:
        return self.raw.get("model_version")

    @property
    def generation(self) -> str | None:
        return self.raw.get("generation")

    @property
    def item_generation(self) -> str | None:
        """A user index's item generation; user indices made before pairs were recorded pair with the
        item generation of their own id."""
        return self.raw.get("item_generation") or self.raw.get("generation")

    @property
    def item_vector_scale(self) -> float | None:
        return self.raw.get("item_vector_scale")

    @property
    def exact_vectors(self) -> bool:
        return bool(self.raw.get("exact_vectors"))

    @property
    def display_doc_values(self) -> bool:
        """Its displayed fields have doc values (``facetrec.serving.hit_fields``): recorded by the
        generations made since; older ones are read from ``_source``."""
        return bool(self.raw.get("display_doc_values"))

    @property
    def index_type(self) -> str | None:
        """How ``item_embed`` is indexed: recorded, or read off the field of generations made before."""
        recorded = self.raw.get("index_type")
        if recorded:
            return recorded
        return (self.properties.get(ITEM_VECTOR_FIELD, {}).get("index_options") or {}).get("type")

    @property
    def partitions(self) -> Mapping[str, Any]:
        return self.raw.get("partitions") or {}

    @property
    def covering(self) -> str | None:
        return self.raw.get("covering")

    @property
    def row_stats(self) -> Mapping[str, Any]:
        return self.raw.get("row_stats") or {}

    @property
    def catalog_schema(self) -> CatalogSchema | None:
        """The catalog schema an item generation was made with (None: made before schemas were recorded)."""
        raw = self.raw.get("catalog_schema")   # its canonical JSON (a string: the facets' order is kept)
        if not raw:
            return None
        source = f"{self.index}'s catalog_schema"
        return CatalogSchema.from_json(raw, source) if isinstance(raw, str) else CatalogSchema.from_dict(raw, source)

    def pairing_fields(self) -> dict:
        """``pairing_fields`` of this item generation."""
        return pairing_fields(self.raw)


def pairing_fields(item_meta: Mapping[str, Any]) -> dict:
    """What every user document of a pair carries about its item generation, from that item index's
    ``_meta``: the item vector scale of a reduced generation (``facetrec.serving.mips``) and whether it
    indexes the flat copy that exact rows scan. A page is asked as these say, so a rollback to a
    generation made without either is served as it was made."""
    fields: dict = {}
    if item_meta.get("item_vector_scale") is not None:
        fields["item_vector_scale"] = item_meta["item_vector_scale"]
    if item_meta.get("exact_vectors"):
        fields["item_exact_vectors"] = True
    return fields


def parse_meta(index: str, mapping: Mapping[str, Any]) -> GenerationMeta:
    """One index's entry of a ``GET <index>/_mapping`` response."""
    body = mapping.get("mappings", {})
    return GenerationMeta(index, body.get("_meta", {}), body.get("properties", {}))


def read_meta(es: Elasticsearch, index: str) -> GenerationMeta:
    """The metadata of ``index`` (a concrete index, or an alias naming one: then of the index it
    names). A missing index raises ``NotFoundError``; the caller's client sets the timeout."""
    mappings = es.indices.get_mapping(index=index)
    name = index if index in mappings else next(iter(mappings))
    return parse_meta(name, mappings[name])
