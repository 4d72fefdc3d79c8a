"""The item change log: one document per change, written before anything else (write-ahead).

The log of the item alias is the index ``<item alias>_changes`` (outside the ``<item alias>-*``
pattern of its generations), a document per change with id ``<item id>/<change id>``, searchable as
soon as it is acknowledged (``refresh``), so every process's takedown view and every replay sees it.
A publish replays the changes received after its catalog snapshot onto the new pair, and every
takedown in effect; a rollback does the same onto the pair it returns to (``ItemChanges.replay``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Iterator

from elasticsearch import ConflictError, Elasticsearch, helpers

from facetrec.items.changes import ItemChange
from facetrec.settings import Settings

# A write waits for a refresh (up to the index's refresh interval) before it answers: longer than a
# page's search may take (FACETREC_ES_REQUEST_TIMEOUT_S), so item writes have a timeout of their own.
WRITE_TIMEOUT_S = 30.0

LOG_MAPPING = {"dynamic": False, "properties": {
    "item_id": {"type": "keyword"}, "change_id": {"type": "keyword"}, "op": {"type": "keyword"},
    "received_at": {"type": "date"}, "fields": {"type": "object", "enabled": False}}}


def change_log_index(settings: Settings) -> str:
    return f"{settings.item_alias}_changes"


class ItemChangeLog:
    def __init__(self, es: Elasticsearch, settings: Settings):
        self.es, self.index = es, change_log_index(settings)
        self._ready = False

    def ensure(self) -> None:
        """Create the log index the first time (idempotent)."""
        if self._ready:
            return
        if not self.es.indices.exists(index=self.index):
            self.es.options(ignore_status=400).indices.create(index=self.index, mappings=LOG_MAPPING,
                                                              settings={"number_of_shards": 1,
                                                                        # green on one node, a copy on each of two
                                                                        "auto_expand_replicas": "0-1"})
        self._ready = True

    @staticmethod
    def doc_id(change: ItemChange) -> str:
        return f"{change.item_id}/{change.change_id}"

    def record(self, change: ItemChange, received_at: datetime) -> dict | None:
        """Log the change; None when new, else the logged document of its id (a retry, or a reuse)."""
        self.ensure()
        try:
            self.es.create(index=self.index, id=self.doc_id(change), document=change.log_document(received_at),
                           refresh=True)
            return None
        except ConflictError:
            return self.es.get(index=self.index, id=self.doc_id(change))["_source"]

    def latest_change_id(self, item_id: str) -> str | None:
        """The change id of the item's newest logged change (None: nothing logged for it)."""
        if not self.es.indices.exists(index=self.index):
            return None
        hits = self.es.search(index=self.index, size=1, query={"term": {"item_id": item_id}},
                              sort=[{"received_at": "desc"}, {"change_id": "desc"}], source=["change_id"])
        return hits["hits"]["hits"][0]["_source"]["change_id"] if hits["hits"]["hits"] else None

    def since(self, received_after: datetime | None = None) -> Iterator[tuple[datetime, ItemChange]]:
        """Every logged change received after ``received_after`` (all: None), oldest first."""
        if not self.es.indices.exists(index=self.index):
            return
        query = {"range": {"received_at": {"gt": received_after.isoformat()}}} if received_after else {"match_all": {}}
        for hit in helpers.scan(self.es, index=self.index, preserve_order=True,
                                query={"query": query, "sort": [{"received_at": "asc"}, {"change_id": "asc"}]}):
            yield datetime.fromisoformat(hit["_source"]["received_at"]), ItemChange.from_log_document(hit["_source"])

    def states(self) -> dict[str, "ItemState"]:
        """Each logged item's state: whether a takedown is in effect (a later put restores it; a patch
        changes nothing of it), and when its latest change was received."""
        return self.read(None)[0]

    def read(self, received_after: datetime | None) -> tuple[dict[str, "ItemState"], list[ItemChange]]:
        """One scan of the whole log: each item's state, and the changes received after
        ``received_after`` (all: None) in the order received, both as of the same moment."""
        states: dict[str, ItemState] = {}
        recent: list[ItemChange] = []
        for at, change in self.since(None):
            states[change.item_id] = fold(states.get(change.item_id), change, at)
            if received_after is None or at > received_after:
                recent.append(change)
        return states, recent

    def takedowns(self) -> set[str]:
        """The items a takedown is in effect for."""
        return {item for item, state in self.states().items() if state.taken_down}


@dataclasses.dataclass(frozen=True)
class ItemState:
    taken_down: bool
    at: datetime


def fold(state: "ItemState | None", change: ItemChange, at: datetime) -> ItemState:
    """An item's state after ``change``: a takedown takes it down, a put restores it, a patch keeps it."""
    down = change.op == "delete" or (change.op == "patch" and state is not None and state.taken_down)
    return ItemState(down, at)
