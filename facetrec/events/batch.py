"""An event batch (a user's few new events) and the checks the API and the stream make of one."""

from __future__ import annotations

import dataclasses
import unicodedata
from datetime import datetime, timezone
from typing import Any

from facetrec.errors import BadRequest, Conflict

MAX_EVENTS_PER_BATCH = 100
MAX_USER_ID = 128
MAX_ITEM_ID = 256
EPOCH_UNITS = ("ms", "s")     # the units a numeric event time may be given in
# A number without a unit is read as epoch milliseconds only from here on (1973-03-03): below it,
# seconds are likelier (1700000000 s is November 2023; as ms it is January 1970), so it is refused.
MIN_UNITLESS_EPOCH_MS = 100_000_000_000


class BatchIdReused(Conflict):
    """A batch id the user's event log already holds, sent again with other events (a 409)."""

    code = "batch_id_reused"

    def __init__(self, batch: "EventBatch"):
        super().__init__(f"batch_id {batch.batch_id!r} was already used for user {batch.user_id!r} with other events; "
                         "a retry must send the same events, a new batch needs a new batch_id")
        self.user_id, self.batch_id = batch.user_id, batch.batch_id
        self.field = "batch_id"


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


def check_user_id(user_id: Any) -> str:
    """A user id as the API and the stream accept it (BadRequest naming ``user_id`` otherwise)."""
    if not isinstance(user_id, str) or not user_id:
        raise BadRequest("user_id", "must be a non-empty string")
    if len(user_id) > MAX_USER_ID:
        raise BadRequest("user_id", f"must be at most {MAX_USER_ID} characters")
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in user_id) or user_id != user_id.strip():
        raise BadRequest("user_id", "must not contain control, separator or surrogate characters")
    return user_id


def check_item_id(item_id: Any, field: str = "item_id", max_bytes: int | None = None) -> str:
    """An item id: 1..MAX_ITEM_ID characters without control characters, and at most ``max_bytes`` in
    UTF-8 where it becomes part of a document id (BadRequest naming ``field``)."""
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ITEM_ID or any(ord(c) < 32 for c in item_id) \
            or (max_bytes is not None and len(item_id.encode("utf-8", "surrogatepass")) > max_bytes):
        limit = f" ({max_bytes} bytes in UTF-8)" if max_bytes is not None else ""
        raise BadRequest(field, f"a string of 1..{MAX_ITEM_ID} characters{limit} without control characters")
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
