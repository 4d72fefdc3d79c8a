"""Near-real-time user vectors: a user's fresh events, applied to the live user index.

One event batch (a few item ids with their times) is

1. **logged** in the event log (``facetrec.events.log``) before anything else, so no accepted batch
   can be lost;
2. **applied** to the user's document in the live user index: the batch's items (in event-time
   order) are appended to the recent history, the user vector is recomputed with the *exported
   user encoder of that index's model version* (``facetrec.model.user_encoder``: the same numbers as the
   nightly job for the same history), and the document is written back with optimistic
   concurrency (``if_seq_no`` / ``if_primary_term``; re-read and retried on a conflict), so two
   concurrent batches of one user never lose each other's events. A user the index does not know
   gets a document (``create``: a concurrent creation is a conflict, retried as an update);
3. **re-applied** after an alias swap (``replay``): the batches logged with events newer than what
   the new generation's batch input saw are applied to the new user index. Each user document
   remembers its last ``MAX_REMEMBERED_BATCHES`` batch ids, so applying a batch twice (a client's
   retry, a replay of a batch that already reached the new index) changes nothing.

The vector, the history and the write all belong to ONE concrete user index (the one the GET read),
so a user vector is only ever made by the model its pair was published with.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from facetrec.catalog.fields import MAX_SEEN_ITEMS
from facetrec.catalog.meta import read_meta
from facetrec.errors import Unavailable
from facetrec.es import alias_index, error_type
from facetrec.events.batch import BatchIdReused, EventBatch
from facetrec.events.log import EventLog
from facetrec.experiments import ExperimentUnknown
from facetrec.model.user_encoder import EncoderRegistry
from facetrec.settings import Settings

log = logging.getLogger("facetrec.events")

MAX_REMEMBERED_BATCHES = 64   # batch ids kept per user document: a re-sent batch is recognised
MAX_WRITE_ATTEMPTS = 16       # optimistic-concurrency retries of one batch before giving up
MAX_BACKOFF_S = 0.1           # retry n waits up to min(1 ms x 2^n, this), fully jittered
EVENT_BATCH_IDS_MAPPING = {"type": "keyword", "index": False, "doc_values": False}


def set_user_vectors(document: dict, vectors: np.ndarray) -> None:
    """A user document's vectors from the encoder's output for it: (D,) the user vector, or (K, D) the
    interests of a multi-interest model, the current one first: ``user_embed`` is that one, and
    ``user_interests`` holds all K (a one-vector model's document holds none)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim == 1:
        document["user_embed"] = vectors.tolist()
        document.pop("user_interests", None)
    else:
        document["user_embed"] = vectors[0].tolist()
        document["user_interests"] = vectors.tolist()


class UserIndexUnavailable(Unavailable):
    """The live user index is missing or the cluster cannot take the write (a 503 for the caller)."""

    public = "the event batch is logged but not applied yet; retry it with the same batch_id shortly"
    log_event = "events_unavailable"


class ApplyConflict(UserIndexUnavailable):
    """The user's document kept changing under this batch for MAX_WRITE_ATTEMPTS reads."""


@dataclasses.dataclass(frozen=True)
class Applied:
    """What applying one batch did (the events endpoint's response body)."""
    user_id: str
    batch_id: str
    status: str                   # applied | duplicate | no_known_items
    user_index: str
    model_version: str | None
    items_added: int = 0
    unknown_to_model: int = 0     # items the model has no vector for (added today): excluded from rows, not in the vector
    unknown_items: int = 0        # items the pair's catalog does not hold: left out of the history
    new_user: bool = False
    attempts: int = 1
    arms: dict[str, str] = dataclasses.field(default_factory=dict)   # {experiment arm: its status} (besides control)


@dataclasses.dataclass
class _PendingWrite:
    """A user document about to be written; its vector is still to be computed (for one user, or for
    a whole micro-batch at once) from ``history``."""
    index: str
    history: list[str]
    document: dict
    encoder: Any
    applied: Applied


@dataclasses.dataclass(frozen=True)
class _UserIndexInfo:
    model_version: str | None
    generation: str | None
    item_generation: str | None
    pairing: dict                 # what its user documents carry about the item generation (GenerationMeta.pairing_fields)
    remembers_batches: bool       # its mapping has event_batch_ids (indices made before template v4 do not)


class UserEvents:
    """Applies event batches to user documents. One per process (the service keeps one; thread-safe)."""

    def __init__(self, es: Elasticsearch, settings: Settings, encoders: EncoderRegistry | None = None,
                 timeout_s: float | None = None, clock: Callable[[], datetime] | None = None,
                 arm_user_aliases: Callable[[], dict[str, str]] | None = None):
        self.es = es if timeout_s is None else es.options(request_timeout=timeout_s)
        self.settings = settings
        self.encoders = encoders or EncoderRegistry(settings.models_root)
        self.log = EventLog(self.es, settings)
        self.log_index = self.log.index
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._info: dict[str, _UserIndexInfo] = {}
        self._lock = threading.Lock()
        # {arm: user alias} of the experiment arms besides control, asked per batch (facetrec.experiments)
        self.arm_user_aliases = arm_user_aliases or dict

    # ---- the two steps of one batch -------------------------------------------------------------
    def record(self, batch: EventBatch) -> bool:
        """Log the batch (write-ahead). False when this batch id was already logged for the user."""
        return self.log.record(batch, self.clock())

    def record_many(self, batches: list[EventBatch]) -> int:
        """Log many batches in one ``_bulk`` (write-ahead, as ``record``); returns how many were new."""
        return self.log.record_many(batches, self.clock())

    def apply(self, batch: EventBatch, user_index: str | None = None) -> Applied:
        """Append the batch to the user's history in ``user_index`` (default: the live alias) and
        recompute the vector, with optimistic concurrency. Raises EncoderUnavailable when the
        index's model has no registered encoder, UserIndexUnavailable when the index is missing."""
        target = user_index or self.settings.user_alias
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            doc = self._read(target, batch.user_id)
            pending = self._pending(batch, doc, doc["_index"] if doc else self._concrete(target), attempt)
            if isinstance(pending, Applied):
                return pending
            features = np.zeros((1, len(pending.encoder.feature_names)), np.int64)
            set_user_vectors(pending.document, pending.encoder.user_interests([pending.history], features)[0])
            try:
                if doc is None:
                    self.es.create(index=pending.index, id=batch.user_id, document=pending.document)
                else:
                    self.es.index(index=pending.index, id=batch.user_id, document=pending.document,
                                  if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
            except ConflictError:   # another batch wrote this user since the read: read again
                time.sleep(random.uniform(0, min(0.001 * 2 ** attempt, MAX_BACKOFF_S)))
                continue
            return pending.applied
        raise ApplyConflict(f"user {batch.user_id!r}: the document changed under batch {batch.batch_id!r} "
                            f"{MAX_WRITE_ATTEMPTS} times in a row; the batch is logged, send it again")

    def apply_many(self, batches: list[EventBatch], user_index: str | None = None) -> list[Applied]:
        """``apply`` for many users at once (the streaming job's micro-batch): one ``mget``, one
        encoder call per model, one ``_bulk`` whose writes carry ``if_seq_no``/``if_primary_term``.
        A write that meets a conflict (an API batch wrote that user meanwhile) goes through
        ``apply`` (re-read, retried). Results come back in the order of ``batches``; a second batch
        of a user already in this call is applied after the first, one at a time."""
        target = user_index or self.settings.user_alias
        results: list[Applied | None] = [None] * len(batches)
        first: dict[str, int] = {}
        later: list[int] = []
        for n, batch in enumerate(batches):
            if batch.user_id in first:
                later.append(n)
            else:
                first[batch.user_id] = n
        if first:
            pending = self._pending_many(batches, first, target, results)
            self._compute_vectors([p for _, _, p in pending])
            later = self._write_many(batches, pending, results) + later
        for n in later:
            results[n] = self.apply(batches[n], user_index=user_index)
        return [r for r in results if r is not None]

    def _pending_many(self, batches: list[EventBatch], first: dict[str, int], target: str,
                      results: list) -> list[tuple[int, dict | None, _PendingWrite]]:
        """One ``mget`` of the users' documents; what each batch writes (a batch with nothing to write
        gets its result at once)."""
        try:
            docs = self.es.mget(index=target, ids=list(first), source_excludes=["user_embed", "user_interests"])["docs"]
        except NotFoundError as exc:
            raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation first") from exc
        pending = []
        new_users_index: str | None = None   # where users the index does not know are created (resolved once)
        for n, doc in zip(first.values(), docs):
            if "error" in doc:
                raise UserIndexUnavailable(f"the user index {target} cannot be read: {doc['error']}; "
                                           "publish a generation (`facetrec pipeline run`) or check the alias")
            found = doc if doc.get("found") else None
            if found is None and new_users_index is None:
                new_users_index = self._concrete(target)
            write = self._pending(batches[n], found, found["_index"] if found else new_users_index, 1)
            if isinstance(write, Applied):
                results[n] = write
            else:
                pending.append((n, found, write))
        return pending

    @staticmethod
    def _compute_vectors(pending: list[_PendingWrite]) -> None:
        """Every pending document's vector, one encoder call per model."""
        by_encoder: dict[int, list[_PendingWrite]] = {}
        for write in pending:
            by_encoder.setdefault(id(write.encoder), []).append(write)
        for group in by_encoder.values():
            encoder = group[0].encoder
            vectors = encoder.user_interests([w.history for w in group],
                                             np.zeros((len(group), len(encoder.feature_names)), np.int64))
            for write, vector in zip(group, vectors):
                set_user_vectors(write.document, vector)

    def _write_many(self, batches: list[EventBatch], pending: list[tuple[int, dict | None, _PendingWrite]],
                    results: list) -> list[int]:
        """One ``_bulk`` of the pending writes; returns the positions to retry one by one (a conflict:
        written meanwhile; anything else, e.g. a rejection: ``apply`` retries or says why)."""
        operations: list[dict] = []
        for n, doc, write in pending:
            if doc is None:
                operations.append({"create": {"_index": write.index, "_id": batches[n].user_id}})
            else:
                operations.append({"index": {"_index": write.index, "_id": batches[n].user_id,
                                             "if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]}})
            operations.append(write.document)
        if not operations:
            return []
        retry = []
        for (n, _, write), item in zip(pending, self.es.bulk(operations=operations)["items"]):
            if next(iter(item.values())).get("status", 500) < 300:
                results[n] = write.applied
            else:
                retry.append(n)
        return retry

    def submit(self, batch: EventBatch) -> Applied:
        """Log, then apply (the events endpoint). A batch id already logged for the user is a retry
        when it holds the same events (applied once: ``duplicate``), else BatchIdReused."""
        if not self.record(batch) and not batch.same_events(self.log.logged(batch)):
            raise BatchIdReused(batch)
        applied = self.apply(batch)
        # Every live arm's pair gets the batch too, each vector made by its own model's encoder. The
        # batch is logged first: a failure here is a 503 and the client's retry applies what is missing.
        try:
            aliases = self.arm_user_aliases()
        except ExperimentUnknown as exc:
            raise UserIndexUnavailable(f"{exc}; the batch is logged and applied to control") from exc
        arms = {arm: self.apply(batch, user_index=alias).status for arm, alias in aliases.items()}
        return dataclasses.replace(applied, arms=arms) if arms else applied

    # ---- after an alias swap ---------------------------------------------------------------------
    def replay(self, user_index: str, since: datetime, received_after: datetime | None = None,
               progress: Callable[[str], None] | None = None) -> dict:
        """Apply every logged batch with an event newer than ``since`` (and, when given, received
        after ``received_after``) to ``user_index`` (a concrete generation), in the order they were
        received. Idempotent (remembered batch ids)."""
        counts = {"batches": 0, "applied": 0, "duplicate": 0, "no_known_items": 0}
        for batch in self.log.since(since, received_after):
            result = self.apply(batch, user_index=user_index)
            counts["batches"] += 1
            counts[result.status] += 1
        if progress and counts["batches"]:
            progress(f"re-applied {counts['applied']} logged event batches to {user_index} "
                     f"({counts['duplicate']} already there, {counts['no_known_items']} with no known item)")
        return counts

    # ---- helpers -----------------------------------------------------------------------------------
    def _pending(self, batch: EventBatch, doc: dict | None, index: str, attempt: int) -> "Applied | _PendingWrite":
        """What applying ``batch`` to the user document ``doc`` (None: the index has no such user)
        of ``index`` means: nothing to write (a duplicate, no item the model knows) or the new
        document, whose vector is still to be computed for ``history``."""
        info = self._index_info(index)
        src = doc["_source"] if doc else {}
        remembered = list(src.get("event_batch_ids") or [])
        if batch.batch_id in remembered:
            return Applied(batch.user_id, batch.batch_id, "duplicate", index, info.model_version, attempts=attempt)
        encoder = self.encoders.get(info.model_version)
        absent = self._absent_items(info, batch.item_ids)
        added = [i for i in batch.item_ids if i not in absent]
        history = [*(src.get("seen_item_ids") or []), *added][-MAX_SEEN_ITEMS:]
        unknown = sum(1 for i in added if not encoder.knows(i))
        if not any(encoder.knows(i) for i in history):
            return Applied(batch.user_id, batch.batch_id, "no_known_items", index, info.model_version,
                           unknown_to_model=unknown, unknown_items=len(absent), new_user=doc is None,
                           attempts=attempt)
        if not info.remembers_batches:
            self._add_batch_ids_field(index)
        document = {**src, "seen_item_ids": history, "updated_at": self.clock().isoformat(),
                    "event_batch_ids": [*remembered, batch.batch_id][-MAX_REMEMBERED_BATCHES:]}
        if doc is None:  # a user this generation does not know: paired like the bulk-loaded ones
            document.update(generation=info.generation, item_generation=info.item_generation, **info.pairing)
        applied = Applied(batch.user_id, batch.batch_id, "applied", index, info.model_version, items_added=len(added),
                          unknown_to_model=unknown, unknown_items=len(absent), new_user=doc is None, attempts=attempt)
        return _PendingWrite(index, history, document, encoder, applied)

    def _absent_items(self, info: "_UserIndexInfo", item_ids: list[str]) -> set[str]:
        """The batch's items the pair's item generation does not hold (a takedown, an id the catalog
        never had): not added to the history (one ``mget`` of ids)."""
        if not info.item_generation or not item_ids:
            return set()
        found = self.es.mget(index=f"{self.settings.item_alias}-{info.item_generation}", ids=list(dict.fromkeys(item_ids)),
                             source=False)["docs"]
        return {d["_id"] for d in found if not d.get("found")}

    def _read(self, target: str, user_id: str) -> dict | None:
        try:
            # The whole document (a replacement must keep every field); its vector is recomputed.
            return self.es.get(index=target, id=user_id, source_excludes=["user_embed", "user_interests"])
        except NotFoundError as exc:
            if error_type(exc) == "index_not_found_exception":
                raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation "
                                           "(`facetrec pipeline run`) or check the alias") from exc
            return None

    def _concrete(self, target: str) -> str:
        if self.es.indices.exists_alias(name=target):
            index = alias_index(self.es, target)
            if index:
                return index
        if self.es.indices.exists(index=target):
            return target
        raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation first")

    def _index_info(self, index: str) -> _UserIndexInfo:
        """The model, generation and pairing of one concrete user index (immutable: cached)."""
        with self._lock:
            if index in self._info:
                return self._info[index]
        meta = read_meta(self.es, index)
        pairing: dict = {}
        if meta.item_generation:
            try:
                pairing = read_meta(self.es, f"{self.settings.item_alias}-{meta.item_generation}").pairing_fields()
            except NotFoundError:
                pairing = {}
        info = _UserIndexInfo(meta.model_version, meta.generation, meta.item_generation, pairing,
                              "event_batch_ids" in meta.properties)
        with self._lock:
            self._info[index] = info
        return info

    def _add_batch_ids_field(self, index: str) -> None:
        """Map the field that remembers batch ids in a user index made before template v4 (once)."""
        self.es.indices.put_mapping(index=index, properties={"event_batch_ids": EVENT_BATCH_IDS_MAPPING})
        with self._lock:
            if index in self._info:
                self._info[index] = dataclasses.replace(self._info[index], remembers_batches=True)
