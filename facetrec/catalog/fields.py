"""The fields of the item and user indices that every part of facetrec names, and their bounds."""

from __future__ import annotations

ITEM_VECTOR_FIELD = "item_embed"           # the item vectors every generation indexes (graph or flat)
EXACT_VECTOR_FIELD = "item_embed_exact"    # graph generations: the same vectors again, flat (settings.exact_vectors)
# What every item's search returns when its catalog schema is not known (a schema adds its displayed
# facets: CatalogSchema.source_fields).
BASE_SOURCE_FIELDS = ("item_id", "title", "popularity", "generation")
# The seen-item exclusion's one bound: the MAX_SEEN_ITEMS most recent items of a user's history are
# stored with the user vector and removed from every row; older ones may reappear.
MAX_SEEN_ITEMS = 500
