"""Item changes applied to every live pair: ``ItemChanges``.

A change is

1. **logged** in the item change log (``facetrec.items.log``) before anything else, so no accepted
   change can be lost (a process killed after the log write loses nothing: the change is applied by
   the next publish's or rollback's replay, or sent again: a retry is applied again while it is the
   item's newest change, and not once a later change superseded it, which it would undo);
2. **applied** to every live item index, control's and each experiment arm's (each write visible to
   searches before the answer: ``refresh=wait_for``): a takedown deletes the item; a put writes the whole
   item; a patch changes some fields of the item the index holds (with optimistic concurrency:
   ``if_seq_no``/``if_primary_term``, read again on a conflict). The item's vector comes from the
   **pair's own model** (its exported item encoder, ``facetrec.model.item_encoder``): a known item's
   trained vector, a new item's from its title and facets; a patch recomputes it only when the tower
   reads a changed field. The document is built as the nightly load builds one for that generation
   (reduced, with the flat copy and the partition fields it records: ``facetrec.items.documents``);
3. **replayed** onto a pair before it goes live (``replay``): the changes received after that
   pair's catalog snapshot, and every takedown in effect whenever it was made, so a publish never
   resurrects a taken-down item nor loses this morning's new ones, and a rollback neither.

Applying a change twice changes nothing (the same document is written again; a deleted item stays
deleted). What the read path does about takedowns that a pair has not applied yet:
``facetrec.items.takedowns``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import datetime, timezone
from typing import Callable

import numpy as np
from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from facetrec.catalog.meta import GenerationMeta, read_meta
from facetrec.es import alias_index
from facetrec.items.changes import ChangeIdReused, ItemBusy, ItemChange
from facetrec.items.documents import item_document, item_fields
from facetrec.items.log import WRITE_TIMEOUT_S, ItemChangeLog
from facetrec.items.takedowns import Takedowns
from facetrec.model.user_encoder import EncoderRegistry
from facetrec.settings import Settings

log = logging.getLogger("facetrec.items")
MAX_WRITE_ATTEMPTS = 16
# What applying a change did to one pair's item index.
CREATED, REPLACED, UPDATED, UNCHANGED, TAKEN_DOWN, NOT_HELD, NOT_FOUND = \
    "created", "replaced", "updated", "unchanged", "taken_down", "not_held", "not_found"
# A retry of a change the item's later change superseded: not applied again (it would undo that one).
SUPERSEDED = "superseded"


@dataclasses.dataclass(frozen=True)
class ChangeApplied:
    """What one change did (the items endpoint's response body)."""
    item_id: str
    change_id: str
    op: str
    status: str                          # applied | duplicate
    pairs: dict[str, str]                # {arm: what it did to that arm's item index} (control included)
    vector: str | None = None            # trained | content | kept (put/patch: where the vector came from)


class ItemChanges:
    """Applies item changes (one per process; thread-safe)."""

    def __init__(self, es: Elasticsearch, settings: Settings, encoders: EncoderRegistry | None = None,
                 takedowns: Takedowns | None = None, arm_item_aliases: Callable[[], dict[str, str]] | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.es, self.settings = es.options(request_timeout=WRITE_TIMEOUT_S), settings
        self.encoders = encoders or EncoderRegistry(settings.models_root, kind="item")
        self.log = ItemChangeLog(self.es, settings)
        self.takedowns = takedowns
        self.arm_item_aliases = arm_item_aliases or dict
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._meta: dict[str, GenerationMeta] = {}
        self._lock = threading.Lock()

    # ---- a change ---------------------------------------------------------------------------------
    def submit(self, change: ItemChange) -> ChangeApplied:
        """Log, then apply to every live pair. A change id logged before is a retry when it holds the
        same change (``duplicate``: applied again, idempotent, while it is the item's newest change;
        ``superseded`` in every pair once a later change followed it), else ChangeIdReused."""
        return self.submit_many([change])[0]

    def submit_many(self, changes: list[ItemChange]) -> list[ChangeApplied]:
        """``submit`` for a batch, in order: each change logged, then applied to every live pair; the
        touched item indices are refreshed once at the end (one refresh for the batch instead of a
        wait per change), so every change is visible to every search from the answer on. A change
        whose id was logged with another change stops the batch there (ChangeIdReused): the changes
        before it are applied and visible."""
        aliases = {"control": self.settings.item_alias, **self.arm_item_aliases()}
        out, touched = [], set()
        try:
            for change in changes:
                received_at = self.clock()
                logged = self.log.record(change, received_at)
                if logged is not None:
                    if not change.same_as(logged):
                        raise ChangeIdReused(change)
                    received_at = datetime.fromisoformat(logged["received_at"])
                    if self.log.latest_change_id(change.item_id) != change.change_id:
                        # A retry of a change a later one superseded: applying it again would undo that one.
                        out.append(ChangeApplied(change.item_id, change.change_id, change.op, "duplicate",
                                                 dict.fromkeys(aliases, SUPERSEDED)))
                        continue
                if self.takedowns is not None:
                    self.takedowns.note(change, received_at)
                pairs, vector = {}, None
                for arm, alias in aliases.items():
                    index = self._concrete(alias)
                    pairs[arm], how = self.apply(change, index, refresh=False)
                    touched.add(index)
                    vector = vector or how
                out.append(ChangeApplied(change.item_id, change.change_id, change.op,
                                         "duplicate" if logged else "applied", pairs, vector))
        finally:
            if touched:
                self.es.indices.refresh(index=",".join(sorted(touched)))
        return out

    def apply(self, change: ItemChange, item_index: str, refresh: bool = True) -> tuple[str, str | None]:
        """Apply ``change`` to one item index (an alias or a concrete index): (what it did, where the
        vector came from). EncoderUnavailable when a put or patch needs the pair's item encoder and it
        is not registered (the change stays logged: the next replay applies it)."""
        index = self._concrete(item_index)
        if change.op == "delete":
            try:
                self.es.delete(index=index, id=change.item_id, refresh="wait_for" if refresh else False)
                return TAKEN_DOWN, None
            except NotFoundError:
                return NOT_HELD, None
        meta = self._meta_of(index)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = self._read(index, change.item_id)
            if change.op == "patch" and current is None:
                return NOT_FOUND, None
            fields, vector, how = self._target(change, current, meta)
            document = self._document(change.item_id, fields, vector, current, meta)
            if how == "kept":   # the stored vector, bit for bit, wherever the document holds it
                stored = current["_source"]["item_embed"]
                document.update({k: stored for k, v in document.items() if k.startswith("item_embed")})
                if document == current["_source"]:
                    return UNCHANGED, how
            wait = "wait_for" if refresh else False   # visible to every search from the answer on
            try:
                if current is None:
                    self.es.create(index=index, id=change.item_id, document=document, refresh=wait)
                else:
                    self.es.index(index=index, id=change.item_id, document=document, refresh=wait,
                                  if_seq_no=current["_seq_no"], if_primary_term=current["_primary_term"])
            except ConflictError:   # written meanwhile: read again
                continue
            return (CREATED if current is None else REPLACED if change.op == "put" else UPDATED), how
        raise ItemBusy(change)

    # ---- replay --------------------------------------------------------------------------------
    def replay(self, item_index: str, since: datetime | None, progress: Callable[[str], None] | None = None) -> dict:
        """Apply to ``item_index`` every change received after ``since`` (its catalog snapshot), in
        the order received, and every takedown in effect (whenever it was made); idempotent."""
        counts = {"changes": 0, "takedowns": 0}
        states, recent = self.log.read(since)   # one scan: the states and the changes as of one moment
        index = self._concrete(item_index)
        for item_id in sorted(item for item, state in states.items() if state.taken_down):
            self.apply(ItemChange(item_id, "replay", "delete", {}), index, refresh=False)
            counts["takedowns"] += 1
        for change in recent:
            if change.op != "delete" and not states[change.item_id].taken_down:
                self.apply(change, index, refresh=False)
                counts["changes"] += 1
        if counts["changes"] or counts["takedowns"]:
            self.es.indices.refresh(index=index)
            if progress:
                progress(f"re-applied {counts['changes']} logged item changes and {counts['takedowns']} takedowns "
                         f"to {index}")
        return counts

    # ---- helpers ---------------------------------------------------------------------------------
    def _concrete(self, name: str) -> str:
        return alias_index(self.es, name) or name

    def _meta_of(self, index: str) -> GenerationMeta:
        with self._lock:
            if index in self._meta:
                return self._meta[index]
        meta = read_meta(self.es, index)
        with self._lock:
            self._meta[index] = meta
        return meta

    def _read(self, index: str, item_id: str) -> dict | None:
        try:
            return self.es.get(index=index, id=item_id, source_exclude_vectors=False)
        except NotFoundError:
            return None

    def _target(self, change: ItemChange, current: dict | None, meta: GenerationMeta
                ) -> tuple[dict, np.ndarray, str]:
        """The item's fields after the change, its raw vector, and where the vector came from."""
        names = [name for name, _ in item_fields(meta.catalog_schema) if name != "popularity"]
        before = {k: v for k, v in (current or {}).get("_source", {}).items() if k in names}
        if change.op == "put":
            fields = {k: v for k, v in change.fields.items() if v is not None}
        else:
            fields = {**before, **change.fields}
            fields = {k: v for k, v in fields.items() if v is not None}
        encoder = self.encoders.get(meta.model_version)
        reads = any(encoder.reads(k) for k in set(fields) | set(before) if fields.get(k) != before.get(k))
        if current is not None and not reads:
            return fields, _raw_vector(current["_source"], meta), "kept"
        return fields, encoder.vector(change.item_id, fields), "trained" if encoder.knows(change.item_id) else "content"

    def _document(self, item_id: str, fields: dict, vector: np.ndarray, current: dict | None,
                  meta: GenerationMeta) -> dict:
        vector = np.asarray(vector, dtype=np.float64)
        if self.settings.similarity == "dot_product":
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        scale = meta.item_vector_scale
        if scale is not None:   # the reduction holds vectors up to the generation's largest norm
            norm = float(np.linalg.norm(vector))
            if norm > scale:
                log.info("a new item's vector is longer than its generation's scale: shortened to it",
                         extra={"event": "item_vector_clipped", "item_id": item_id, "norm": norm, "scale": scale})
                vector = vector * (scale / norm) * (1 - 1e-7)
        popularity = ((current or {}).get("_source") or {}).get("popularity", 0.0)
        record = {"item_id": item_id, "item_embed": vector.tolist(), "popularity": popularity, **fields}
        _, doc = item_document(record, meta.generation or "", len(vector), self.settings.similarity == "dot_product",
                               item_vector_scale=scale, exact_copy=meta.exact_vectors, partitions=meta.partitions,
                               fields=item_fields(meta.catalog_schema))
        return doc


def _raw_vector(source: dict, meta: GenerationMeta) -> np.ndarray:
    """The model's raw vector of a stored item (a reduced generation's: undone)."""
    stored = np.asarray(source["item_embed"], dtype=np.float64)
    if meta.item_vector_scale is not None:
        return stored[:-1] * meta.item_vector_scale
    return stored
