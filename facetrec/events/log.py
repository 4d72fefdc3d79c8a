"""The event log: one document per accepted batch, written before anything else (write-ahead).

The log of the user alias is the index ``<user alias>_events`` (outside the ``<user alias>-*``
pattern of its generations), a document per batch with id ``<user id>/<batch id>``. A batch logged
once is never logged again (``create``); a publish re-applies the batches logged with events newer
than what its input saw (``UserEvents.replay``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

from elasticsearch import ConflictError, Elasticsearch, helpers

from facetrec.errors import Unavailable
from facetrec.events.batch import EventBatch
from facetrec.settings import Settings


class EventLogUnavailable(Unavailable):
    """Some batches could not be logged (the caller retries them)."""


def event_log_index(settings: Settings) -> str:
    """The event log of the user alias (outside the ``<user alias>-*`` pattern of its generations)."""
    return f"{settings.user_alias}_events"


class EventLog:
    def __init__(self, es: Elasticsearch, settings: Settings):
        self.es, self.index = es, event_log_index(settings)

    @staticmethod
    def doc_id(batch: EventBatch) -> str:
        return f"{batch.user_id}/{batch.batch_id}"

    def record(self, batch: EventBatch, received_at: datetime) -> bool:
        """Log the batch. False when this batch id was already logged for the user."""
        try:
            self.es.create(index=self.index, id=self.doc_id(batch), document=batch.log_document(received_at))
            return True
        except ConflictError:
            return False

    def record_many(self, batches: list[EventBatch], received_at: datetime) -> int:
        """Log many batches in one ``_bulk``; returns how many were new. A batch already logged (a
        re-run micro-batch) is left as it was; any other failure raises EventLogUnavailable."""
        if not batches:
            return 0
        operations: list[dict] = []
        for batch in batches:
            operations += [{"create": {"_index": self.index, "_id": self.doc_id(batch)}},
                           batch.log_document(received_at)]
        items = [next(iter(i.values())) for i in self.es.bulk(operations=operations)["items"]]
        failed = [i for i in items if i.get("status", 500) >= 300 and i.get("status") != 409]
        if failed:
            raise EventLogUnavailable(f"{len(failed)} of {len(batches)} event batches could not be logged in "
                                      f"{self.index}, first: {failed[0].get('error')}")
        return sum(1 for i in items if i.get("status", 500) < 300)

    def logged(self, batch: EventBatch) -> dict:
        """The logged document of ``batch``'s id."""
        return self.es.get(index=self.index, id=self.doc_id(batch))["_source"]

    def since(self, since: datetime, received_after: datetime | None = None) -> Iterator[EventBatch]:
        """Every logged batch with an event newer than ``since`` (and, when given, received after
        ``received_after``), in the order they were received (nothing when there is no log yet)."""
        if not self.es.indices.exists(index=self.index):
            return
        self.es.indices.refresh(index=self.index)   # every acknowledged batch is searchable now
        ranges = [{"range": {"last_event_at": {"gt": since.isoformat()}}}]
        if received_after is not None:
            ranges.append({"range": {"received_at": {"gte": received_after.isoformat()}}})
        hits = helpers.scan(self.es, index=self.index, preserve_order=True,
                            query={"query": {"bool": {"filter": ranges}},
                                   "sort": [{"received_at": "asc"}, {"batch_id": "asc"}]})
        for hit in hits:
            yield EventBatch.from_log_document(hit["_source"])
