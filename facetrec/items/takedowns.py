"""The taken-down items as the read path sees them: a small set every serving process keeps.

A takedown is applied to every live item index before its answer (``facetrec.items.apply``), but a
pair may not hold it yet: an arm whose apply failed, a pair a rollback returns to before its replay
ran, a generation loaded from a catalog exported before the takedown. So every page also leaves
out the items in this set (``facetrec.serving.homepage``), whatever pair it reads. The process that
took the change notes it at once; every other process reads the change log's new entries at most
every ``FACETREC_TAKEDOWN_POLL_S`` (a search of the changes received since its last read, read
again from ``OVERLAP`` before it: the write timeout and 5 s for the hosts' clocks), so a takedown is out of every page within that time of its answer.
A later put of the item restores it.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Callable

from facetrec.items.changes import ItemChange
from facetrec.items.log import WRITE_TIMEOUT_S, ItemChangeLog, ItemState, fold

log = logging.getLogger("facetrec.items")
# Changes received this long before the newest one read are read again: a change is stamped when its
# log write starts and is visible when the write answers (at most the write timeout later), and the
# serving hosts' clocks are taken to agree within 5 s.
OVERLAP = timedelta(seconds=WRITE_TIMEOUT_S + 5)


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
        """A change this process logged (``at``: when the log received it): known at once, before any
        other process reads it; an older change than the item's newest known one changes nothing."""
        self._merge([(at, change)])

    def _read(self) -> None:
        started = self.clock()
        since = self._read_until - OVERLAP if self._read_until else None
        read = list(self.change_log.since(since))
        self._merge(read)   # merged, not replaced: a change noted meanwhile is never overwritten by an older one
        newest = max([at for at, _ in read] + ([self._read_until] if self._read_until else []), default=None)
        with self._lock:
            self._read_until, self._read_at = newest, started

    def _merge(self, changes: list[tuple[datetime, ItemChange]]) -> None:
        """Fold each change, oldest first, into its item's state unless that state is newer."""
        with self._lock:
            for at, change in changes:
                previous = self._states.get(change.item_id)
                if previous is None or at >= previous.at:
                    self._states[change.item_id] = fold(previous, change, at)
            self._down = frozenset(i for i, s in self._states.items() if s.taken_down)
