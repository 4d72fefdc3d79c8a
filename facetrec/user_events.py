"""Near-real-time user vectors: a user's fresh events, applied to the live user index.

One event batch (a few item ids with their times) is

1. **logged** in the event log index (``<user alias>_events``, one document per batch, id
   ``<user id>/<batch id>``) before anything else, so no accepted batch can be lost;
2. **applied** to the user's document in the live user index: the batch's items (in event-time
   order) are appended to the recent history, the user vector is recomputed with the *exported
   user encoder of that index's model version* (``facetrec.user_encoder``: the same numbers as the
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
import unicodedata
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from elasticsearch import ApiError, ConflictError, Elasticsearch, NotFoundError, helpers

from facetrec.es import alias_index
from facetrec.experiments import ExperimentUnknown
from facetrec.homepage import pairing_fields
from facetrec.rows import MAX_SEEN_ITEMS, BadRequest
from facetrec.settings import Settings
from facetrec.user_encoder import EncoderRegistry, EncoderUnavailable

log = logging.getLogger("facetrec.events")

MAX_EVENTS_PER_BATCH = 100
MAX_USER_ID = 128
MAX_ITEM_ID = 256
MAX_REMEMBERED_BATCHES = 64   # batch ids kept per user document: a re-sent batch is recognised
MAX_WRITE_ATTEMPTS = 16       # optimistic-concurrency retries of one batch before giving up
MAX_BACKOFF_S = 0.1           # retry n waits up to min(1 ms x 2^n, this), fully jittered
EVENT_BATCH_IDS_MAPPING = {"type": "keyword", "index": False, "doc_values": False}
EPOCH_UNITS = ("ms", "s")     # the units a numeric event time may be given in
# A number without a unit is read as epoch milliseconds only from here on (1973-03-03): below it,
# seconds are likelier (1700000000 s is November 2023; as ms it is January 1970), so it is refused.
MIN_UNITLESS_EPOCH_MS = 100_000_000_000


class UserIndexUnavailable(RuntimeError):
    """The live user index is missing or the cluster cannot take the write (a 503 for the caller)."""


class ApplyConflict(UserIndexUnavailable):
    """The user's document kept changing under this batch for MAX_WRITE_ATTEMPTS reads."""


class BatchIdReused(ValueError):
    """A batch id the user's event log already holds, sent again with other events (a 409)."""

    def __init__(self, batch: "EventBatch"):
        super().__init__(f"batch_id {batch.batch_id!r} was already used for user {batch.user_id!r} with other events; "
                         "a retry must send the same events, a new batch needs a new batch_id")
        self.user_id, self.batch_id = batch.user_id, batch.batch_id


@dataclasses.dataclass(frozen=True)
class Event:
    item_id: str
    at: datetime           # timezone-aware


@dataclasses.dataclass(frozen=True)
class EventBatch:
    user_id: str
    batch_id: str
    events: tuple[Event, ...]

    @property
    def item_ids(self) -> list[str]:
        """The batch's items in event-time order (a stable sort: equal times keep the batch's order)."""
        return [e.item_id for e in sorted(self.events, key=lambda e: e.at)]

    @property
    def last_event_at(self) -> datetime:
        return max(e.at for e in self.events)

    def log_document(self, received_at: datetime) -> dict:
        ordered = sorted(self.events, key=lambda e: e.at)
        return {"user_id": self.user_id, "batch_id": self.batch_id, "item_ids": [e.item_id for e in ordered],
                "event_times": [e.at.isoformat() for e in ordered], "last_event_at": self.last_event_at.isoformat(),
                "received_at": received_at.isoformat()}

    def same_events(self, src: dict) -> bool:
        """Whether the logged batch ``src`` (a log document) holds exactly these events."""
        logged = sorted(zip(src.get("item_ids") or [], src.get("event_times") or []))
        return logged == sorted((e.item_id, e.at.isoformat()) for e in self.events)

    @classmethod
    def from_log_document(cls, src: dict) -> "EventBatch":
        return cls(src["user_id"], src["batch_id"],
                   tuple(Event(i, datetime.fromisoformat(t)) for i, t in zip(src["item_ids"], src["event_times"])))


@dataclasses.dataclass(frozen=True)
class Applied:
    """What applying one batch did (the events endpoint's response body)."""
    user_id: str
    batch_id: str
    status: str                   # applied | duplicate | no_known_items
    user_index: str
    model_version: str | None
    items_added: int = 0
    unknown_to_model: int = 0     # items the model has no vector for: excluded from rows, not in the vector
    new_user: bool = False
    attempts: int = 1
    arms: dict[str, str] = dataclasses.field(default_factory=dict)   # {experiment arm: its status} (besides control)


def event_log_index(settings: Settings) -> str:
    """The event log of the user alias (outside the ``<user alias>-*`` pattern of its generations)."""
    return f"{settings.user_alias}_events"


@dataclasses.dataclass
class _Plan:
    """A user document about to be written: its vector is computed (one user or a whole batch) from history."""
    index: str
    history: list[str]
    document: dict
    encoder: Any
    applied: Applied


@dataclasses.dataclass(frozen=True)
class _IndexInfo:
    model_version: str | None
    generation: str | None
    item_generation: str | None
    pairing: dict   # what its user documents carry about the item generation (facetrec.homepage.pairing_fields)


class UserEvents:
    """Applies event batches to user documents. One per process (the service keeps one; thread-safe)."""

    def __init__(self, es: Elasticsearch, settings: Settings, encoders: EncoderRegistry | None = None,
                 timeout_s: float | None = None, clock: Callable[[], datetime] | None = None,
                 arm_user_aliases: Callable[[], dict[str, str]] | None = None):
        self.es = es if timeout_s is None else es.options(request_timeout=timeout_s)
        self.settings = settings
        self.encoders = encoders or EncoderRegistry(settings.models_root)
        self.log_index = event_log_index(settings)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._info: dict[str, _IndexInfo] = {}
        self._lock = threading.Lock()
        # {arm: user alias} of the experiment arms besides control, asked per batch (facetrec.experiments)
        self.arm_user_aliases = arm_user_aliases or dict

    # ---- the two steps of one batch -------------------------------------------------------------
    def record(self, batch: EventBatch) -> bool:
        """Log the batch (write-ahead). False when this batch id was already logged for the user."""
        try:
            self.es.create(index=self.log_index, id=f"{batch.user_id}/{batch.batch_id}",
                           document=batch.log_document(self.clock()))
            return True
        except ConflictError:
            return False

    def record_many(self, batches: list[EventBatch]) -> int:
        """Log many batches in one ``_bulk`` (write-ahead, as ``record``); returns how many were new.
        A batch already logged (a re-run micro-batch) is left as it was; any other failure raises."""
        if not batches:
            return 0
        received = self.clock()
        operations: list[dict] = []
        for batch in batches:
            operations += [{"create": {"_index": self.log_index, "_id": f"{batch.user_id}/{batch.batch_id}"}},
                           batch.log_document(received)]
        items = [next(iter(i.values())) for i in self.es.bulk(operations=operations)["items"]]
        failed = [i for i in items if i.get("status", 500) >= 300 and i.get("status") != 409]
        if failed:
            raise UserIndexUnavailable(f"{len(failed)} of {len(batches)} event batches could not be logged in "
                                       f"{self.log_index}, first: {failed[0].get('error')}")
        return sum(1 for i in items if i.get("status", 500) < 300)

    def apply(self, batch: EventBatch, user_index: str | None = None) -> Applied:
        """Append the batch to the user's history in ``user_index`` (default: the live alias) and
        recompute the vector, with optimistic concurrency. Raises EncoderUnavailable when the
        index's model has no registered encoder, UserIndexUnavailable when the index is missing."""
        target = user_index or self.settings.user_alias
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            doc = self._read(target)(batch.user_id)
            plan = self._plan(batch, doc, doc["_index"] if doc else self._concrete(target), attempt)
            if isinstance(plan, Applied):
                return plan
            plan.document["user_embed"] = [float(x) for x in plan.encoder.user_vector(plan.history)]
            try:
                if doc is None:
                    self.es.create(index=plan.index, id=batch.user_id, document=plan.document)
                else:
                    self.es.index(index=plan.index, id=batch.user_id, document=plan.document,
                                  if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
            except ConflictError:   # another batch wrote this user since the read: read again
                time.sleep(random.uniform(0, min(0.001 * 2 ** attempt, MAX_BACKOFF_S)))
                continue
            return plan.applied
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
            try:
                docs = self.es.mget(index=target, ids=list(first), source_excludes=["user_embed"])["docs"]
            except NotFoundError as exc:
                raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation first") from exc
            plans: list[tuple[int, dict | None, _Plan]] = []
            new_users_index: str | None = None   # where users the index does not know are created (resolved once)
            for n, doc in zip(first.values(), docs):
                if "error" in doc:
                    raise UserIndexUnavailable(f"the user index {target} cannot be read: {doc['error']}; "
                                               "publish a generation (`facetrec pipeline run`) or check the alias")
                found = doc if doc.get("found") else None
                if found is None and new_users_index is None:
                    new_users_index = self._concrete(target)
                plan = self._plan(batches[n], found, found["_index"] if found else new_users_index, 1)
                if isinstance(plan, Applied):
                    results[n] = plan
                else:
                    plans.append((n, found, plan))
            by_encoder: dict[int, list[_Plan]] = {}
            for _, _, plan in plans:
                by_encoder.setdefault(id(plan.encoder), []).append(plan)
            for group in by_encoder.values():
                vectors = group[0].encoder.user_vectors(
                    [p.history for p in group], np.zeros((len(group), len(group[0].encoder.feature_names)), np.int64))
                for plan, vector in zip(group, vectors):
                    plan.document["user_embed"] = [float(x) for x in vector]
            operations: list[dict] = []
            for n, doc, plan in plans:
                if doc is None:
                    operations.append({"create": {"_index": plan.index, "_id": batches[n].user_id}})
                else:
                    operations.append({"index": {"_index": plan.index, "_id": batches[n].user_id,
                                                 "if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]}})
                operations.append(plan.document)
            retry: list[int] = []
            if operations:
                response = self.es.bulk(operations=operations)
                for (n, _, plan), item in zip(plans, response["items"]):
                    outcome = next(iter(item.values()))
                    if outcome.get("status", 500) < 300:
                        results[n] = plan.applied
                    else:   # 409: written meanwhile; anything else (a rejection): apply() retries or says why
                        retry.append(n)
            later = retry + later
        for n in later:
            results[n] = self.apply(batches[n], user_index=user_index)
        return [r for r in results if r is not None]

    def submit(self, batch: EventBatch) -> Applied:
        """Log, then apply (the events endpoint). A batch id already logged for the user is a retry
        when it holds the same events (applied once: ``duplicate``), else BatchIdReused."""
        if not self.record(batch):
            logged = self.es.get(index=self.log_index, id=f"{batch.user_id}/{batch.batch_id}")["_source"]
            if not batch.same_events(logged):
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
        if not self.es.indices.exists(index=self.log_index):
            return counts
        self.es.indices.refresh(index=self.log_index)   # every acknowledged batch is searchable now
        ranges = [{"range": {"last_event_at": {"gt": since.isoformat()}}}]
        if received_after is not None:
            ranges.append({"range": {"received_at": {"gte": received_after.isoformat()}}})
        hits = helpers.scan(self.es, index=self.log_index, preserve_order=True,
                            query={"query": {"bool": {"filter": ranges}},
                                   "sort": [{"received_at": "asc"}, {"batch_id": "asc"}]})
        for hit in hits:
            result = self.apply(EventBatch.from_log_document(hit["_source"]), user_index=user_index)
            counts["batches"] += 1
            counts[result.status] += 1
        if progress and counts["batches"]:
            progress(f"re-applied {counts['applied']} logged event batches to {user_index} "
                     f"({counts['duplicate']} already there, {counts['no_known_items']} with no known item)")
        return counts

    # ---- helpers -----------------------------------------------------------------------------------
    def _plan(self, batch: EventBatch, doc: dict | None, index: str, attempt: int) -> "Applied | _Plan":
        """What applying ``batch`` to the user document ``doc`` (None: the index has no such user)
        of ``index`` means: nothing to write (a duplicate, no item the model knows) or the new
        document, whose vector is still to be computed for ``history``."""
        info = self._index_info(index)
        src = doc["_source"] if doc else {}
        remembered = list(src.get("event_batch_ids") or [])
        if batch.batch_id in remembered:
            return Applied(batch.user_id, batch.batch_id, "duplicate", index, info.model_version, attempts=attempt)
        encoder = self.encoders.get(info.model_version)
        added = batch.item_ids
        history = [*(src.get("seen_item_ids") or []), *added][-MAX_SEEN_ITEMS:]
        unknown = sum(1 for i in added if not encoder.knows(i))
        if not any(encoder.knows(i) for i in history):
            return Applied(batch.user_id, batch.batch_id, "no_known_items", index, info.model_version,
                           unknown_to_model=unknown, new_user=doc is None, attempts=attempt)
        document = {**src, "seen_item_ids": history, "updated_at": self.clock().isoformat(),
                    "event_batch_ids": [*remembered, batch.batch_id][-MAX_REMEMBERED_BATCHES:]}
        if doc is None:  # a user this generation does not know: paired like the bulk-loaded ones
            document.update(generation=info.generation, item_generation=info.item_generation, **info.pairing)
        applied = Applied(batch.user_id, batch.batch_id, "applied", index, info.model_version, items_added=len(added),
                          unknown_to_model=unknown, new_user=doc is None, attempts=attempt)
        return _Plan(index, history, document, encoder, applied)

    def _read(self, target: str) -> Callable[[str], dict | None]:
        def read(user_id: str) -> dict | None:
            try:
                # The whole document (a replacement must keep every field); its vector is recomputed.
                return self.es.get(index=target, id=user_id, source_excludes=["user_embed"])
            except NotFoundError as exc:
                if _error_type(exc) == "index_not_found_exception":
                    raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation "
                                               "(`facetrec pipeline run`) or check the alias") from exc
                return None
        return read

    def _concrete(self, target: str) -> str:
        if self.es.indices.exists_alias(name=target):
            index = alias_index(self.es, target)
            if index:
                return index
        if self.es.indices.exists(index=target):
            return target
        raise UserIndexUnavailable(f"the user index {target} does not exist: publish a generation first")

    def _index_info(self, index: str) -> _IndexInfo:
        """The model, generation and pairing of one concrete user index (immutable: cached), and the
        field that remembers batch ids added to indices made before it was in the template."""
        with self._lock:
            if index in self._info:
                return self._info[index]
        mappings = self.es.indices.get_mapping(index=index)[index]["mappings"]
        meta = mappings.get("_meta", {})
        item_generation = meta.get("item_generation") or meta.get("generation")
        pairing: dict = {}
        if item_generation:
            item_index = f"{self.settings.item_alias}-{item_generation}"
            try:
                pairing = pairing_fields(self.es.indices.get_mapping(index=item_index)[item_index]["mappings"]
                                         .get("_meta", {}))
            except NotFoundError:
                pairing = {}
        if "event_batch_ids" not in mappings.get("properties", {}):  # a generation made before template v4
            self.es.indices.put_mapping(index=index, properties={"event_batch_ids": EVENT_BATCH_IDS_MAPPING})
        info = _IndexInfo(meta.get("model_version"), meta.get("generation"), item_generation, pairing)
        with self._lock:
            self._info[index] = info
        return info


def _error_type(exc: ApiError) -> str | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    return error.get("type") if isinstance(error, dict) else None


def check_user_id(user_id: Any) -> str:
    """A user id as the API and the stream accept it (BadRequest naming ``user_id`` otherwise)."""
    if not isinstance(user_id, str) or not user_id:
        raise BadRequest("user_id", "must be a non-empty string")
    if len(user_id) > MAX_USER_ID:
        raise BadRequest("user_id", f"must be at most {MAX_USER_ID} characters")
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in user_id) or user_id != user_id.strip():
        raise BadRequest("user_id", "must not contain control, separator or surrogate characters")
    return user_id


def check_item_id(item_id: Any, field: str = "item_id") -> str:
    """An event's item id: 1..MAX_ITEM_ID characters, no control characters (BadRequest naming ``field``)."""
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ITEM_ID or any(ord(c) < 32 for c in item_id):
        raise BadRequest(field, f"a string of 1..{MAX_ITEM_ID} characters without control characters")
    return item_id


def parse_event_time(value: Any, now: datetime, max_future_s: float = 300.0, unit: str | None = None) -> datetime:
    """An event time: ISO 8601 with a zone (``...Z`` or ``+hh:mm``), or an epoch number in ``unit``
    (``ms`` or ``s``). Without a unit a number is epoch milliseconds, and one below
    MIN_UNITLESS_EPOCH_MS is refused as ambiguous (epoch seconds, most likely). At most
    ``max_future_s`` ahead of ``now``. Raises ValueError saying what is wrong."""
    if unit is not None and unit not in EPOCH_UNITS:
        raise ValueError(f"unknown epoch unit {unit!r}; expected one of {EPOCH_UNITS}")
    if isinstance(value, bool):
        raise ValueError("expected an ISO 8601 time with a zone or an epoch number")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite epoch number")
        if unit is None and 0 <= value < MIN_UNITLESS_EPOCH_MS:
            as_ms = datetime.fromtimestamp(value / 1000.0, tz=timezone.utc).isoformat()
            raise ValueError(f"{value} is ambiguous: as epoch milliseconds (the default) it is {as_ms}; give the "
                             "unit (epoch seconds: \"s\"), milliseconds, or an ISO 8601 time with a zone")
        ms = value * 1000.0 if unit == "s" else value
        if not 0 <= ms < 1e14:
            raise ValueError(f"epoch {'seconds' if unit == 's' else 'milliseconds'} out of range")
        at = datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
    elif isinstance(value, str) and 10 <= len(value) <= 40:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 time with a zone, e.g. 2026-11-23T10:00:00Z") from None
        if at.tzinfo is None:
            raise ValueError("the time needs a zone (Z or +hh:mm)")
    else:
        raise ValueError("expected an ISO 8601 time with a zone or an epoch number")
    if (at - now).total_seconds() > max_future_s:
        raise ValueError(f"more than {int(max_future_s)} s in the future")
    return at.astimezone(timezone.utc)
