"""The taken-down items as the read path sees them: a small set every serving process keeps.

A takedown is applied to every live item index before its answer (``facetrec.items.apply``), but a
pair may not hold it yet: an arm whose apply failed, a pair a rollback returns to before its replay
ran, a generation loaded from a catalog exported before the takedown. So every page also leaves
out the items in this set (``facetrec.serving.homepage``), whatever pair it reads. The process that
took the change notes it at once; every other process reads the change log's new entries at most
every ``FACETREC_TAKEDOWN_POLL_S`` (a search of the changes received since its last read, a few
seconds of overlap for clocks), so a takedown is out of every page within that time of its answer.
A later put of the item restores it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Callable

from facetrec.items.changes import ItemChange
from facetrec.items.log import ItemChangeLog, ItemState, fold

log = logging.getLogger("facetrec.items")
OVERLAP = timedelta(seconds=5)   # changes received this long before the last read are read again


class Takedowns:
    def __init__(self, change_log: ItemChangeLog, poll_s: float, clock: Callable[[], float] = time.monotonic):
        self.change_log, self.poll_s, self.clock = change_log, poll_s, clock
        self._states: dict[str, ItemState] = {}
        self._down: frozenset[str] = frozenset()
        self._read_until: datetime | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self._reading = threading.Lock()

    def ids(self) -> frozenset[str]:
        """The items a takedown is in effect for (read again when older than ``poll_s``; a read that
        fails keeps the last set, said in the log)."""
        if self.clock() - self._read_at >= self.poll_s and self._reading.acquire(blocking=False):
            try:
                self._read()
            except Exception as exc:  # noqa: BLE001 - a page is served with the last known set
                log.warning("takedowns not read; the last known ones apply", extra={
                    "event": "takedowns_unread", "detail": str(exc)[:300]})
            finally:
                self._reading.release()
        return self._down

    def note(self, change: ItemChange, at: datetime) -> None:
        """A change this process logged: known at once, before any other process reads it."""
        with self._lock:
            self._states[change.item_id] = fold(self._states.get(change.item_id), change, at)
            self._down = frozenset(i for i, s in self._states.items() if s.taken_down)

    def _read(self) -> None:
        started = self.clock()
        since = self._read_until - OVERLAP if self._read_until else None
        newest = self._read_until
        with self._lock:
            states = dict(self._states)
        for at, change in self.change_log.since(since):
            previous = states.get(change.item_id)
            if previous is None or at >= previous.at:
                states[change.item_id] = fold(previous, change, at)
            newest = at if newest is None or at > newest else newest
        with self._lock:
            self._states = states
            self._down = frozenset(i for i, s in states.items() if s.taken_down)
            self._read_until, self._read_at = newest, started
