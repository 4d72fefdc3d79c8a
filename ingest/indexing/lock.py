"""The re-index lock: a lease on one document in the ``facetrec-locks`` index, with fencing.

- **Acquire**: create the document (``op_type=create``); a second run finds it and fails fast.
  A lock is taken over only after its lease has expired (``expires_at`` passed), and the takeover
  is a compare-and-set (``if_seq_no``/``if_primary_term``) so two waiters cannot both win. Nothing
  depends on process ids: a holder on another host, or in a container sharing this hostname, is
  judged by its lease alone.
- **Heartbeat**: while the run is alive a thread renews the lease every third of its length, each
  renewal a compare-and-set on the version this holder last wrote. A run killed with SIGKILL stops
  renewing and its lease runs out ``lease_s`` later.
- **Fence**: before every destructive step (deleting partial indices, replacing a leftover index,
  the alias swap, retention) the run calls ``fence(step)``: a compare-and-set renewal that only
  succeeds while this holder's version is the current one. A run that lost its lease (stalled past
  it, and another run took over) gets ``LockLost`` there and stops before touching anything; a
  successful fence also gives the holder a full lease in which nobody can take over.
  ``check()`` is the cheap local form (the heartbeat's last result) used per bulk document.

Leases are judged by wall clocks: hosts that share a lock must keep their clocks in sync (NTP);
skew shortens or lengthens the lease by the skew.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from facetrec.errors import Refused
from facetrec.settings import Settings

LOCK_INDEX = "facetrec-locks"


class LockHeld(Refused):
    """Another run holds the lock (and its lease has not run out)."""


class LockLost(Refused):
    """This run no longer holds the lock: it must not change anything."""


def lock_name(settings: Settings) -> str:
    """The re-index lock of the item alias: every publisher of its pairs (control's and every arm's)."""
    return f"reindex-{settings.item_alias}"


def reindex_lock(es: Elasticsearch, settings: Settings) -> "ReindexLock":
    """The one re-index lock of these settings' pairs (not yet acquired: use it as a context manager)."""
    return ReindexLock(es, name=lock_name(settings), lease_s=settings.lock_lease_s)


class ReindexLock:
    def __init__(self, es: Elasticsearch, name: str = "reindex", lease_s: float = 60.0,
                 heartbeat_s: float | None = None):
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.es, self.name, self.lease_s = es, name, float(lease_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else self.lease_s / 3
        self.token = uuid.uuid4().hex
        self._seq: tuple[int, int] | None = None
        self._expires_at = 0.0          # by this holder's last successful write
        self._lost: str | None = None
        self._mutex = threading.Lock()  # one write at a time (heartbeat vs fence)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- acquisition ---------------------------------------------------------------------------
    def _ensure_index(self) -> None:
        if not self.es.indices.exists(index=LOCK_INDEX):
            self.es.options(ignore_status=400).indices.create(
                index=LOCK_INDEX, settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"})

    def _document(self, acquired_at: float, now: float) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": acquired_at,
                "renewed_at": now, "expires_at": now + self.lease_s}

    def acquire(self) -> "ReindexLock":
        self._ensure_index()
        for _ in range(3):
            now = time.time()
            try:
                resp = self.es.create(index=LOCK_INDEX, id=self.name, document=self._document(now, now),
                                      refresh="true")
                return self._held(resp, now)
            except ConflictError:
                pass
            try:
                held = self.es.get(index=LOCK_INDEX, id=self.name)
            except NotFoundError:
                continue  # released in between: try again
            holder = held["_source"]
            expires_at = float(holder.get("expires_at", 0))
            if expires_at > now:
                raise LockHeld(
                    f"another re-index holds the lock '{self.name}' (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"since {_utc(holder.get('acquired_at', 0))}, lease until {_utc(expires_at)}); wait for it "
                    f"to finish, or for its lease to run out if it died (at most {self.lease_s:.0f}s after its "
                    "last heartbeat); `facetrec index unlock` removes it by force")
            try:
                resp = self.es.index(index=LOCK_INDEX, id=self.name, document=self._document(now, now),
                                     if_seq_no=held["_seq_no"], if_primary_term=held["_primary_term"],
                                     refresh="true")
                print(f"facetrec: took over the re-index lock '{self.name}': the lease of host {holder.get('host')} "
                      f"pid {holder.get('pid')} ran out at {_utc(expires_at)}", file=sys.stderr)
                return self._held(resp, now)
            except (ConflictError, NotFoundError):
                pass  # someone else took it over or released it first: look again
        raise LockHeld(f"could not acquire the lock '{self.name}': it keeps changing hands")

    def _held(self, resp: dict, now: float) -> "ReindexLock":
        self._seq = (resp["_seq_no"], resp["_primary_term"])
        self._acquired_at, self._expires_at, self._lost = now, now + self.lease_s, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat-{self.name}", daemon=True)
        self._thread.start()
        return self

    # ---- holding -------------------------------------------------------------------------------
    def _renew(self) -> None:
        """Compare-and-set renewal; marks the lock lost when another holder's version is there."""
        with self._mutex:
            if self._lost or self._seq is None:
                return
            now = time.time()
            try:
                resp = self.es.index(index=LOCK_INDEX, id=self.name, document=self._document(self._acquired_at, now),
                                     if_seq_no=self._seq[0], if_primary_term=self._seq[1], refresh="true")
            except (ConflictError, NotFoundError) as exc:
                self._lost = f"the lock document changed hands ({type(exc).__name__})"
                return
            self._seq = (resp["_seq_no"], resp["_primary_term"])
            self._expires_at = now + self.lease_s

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - the cluster is unreachable: try again next beat
                print(f"facetrec: lock heartbeat failed ({type(exc).__name__}); retrying", file=sys.stderr)
            if self._lost:
                return

    def check(self, step: str = "") -> None:
        """Raise LockLost unless this holder's lease is still running (no cluster call)."""
        if self._seq is None:
            raise LockLost(f"{step}: the re-index lock '{self.name}' is not held")
        if self._lost:
            raise LockLost(f"{step}: {self._lost}; another run owns the lock '{self.name}' now, so this run stops "
                           "without changing anything")
        if time.time() >= self._expires_at:
            raise LockLost(f"{step}: the lease on the lock '{self.name}' ran out at {_utc(self._expires_at)} "
                           "(heartbeats failed); another run may own it, so this run stops")

    def fence(self, step: str = "") -> None:
        """Compare-and-set on the lock document before a destructive step: proves this run still
        holds the lock and extends the lease; raises LockLost otherwise."""
        self.check(step)
        self._renew()
        self.check(step)

    def pause_heartbeat(self) -> None:
        """Stop renewing (as a stalled process would); for fault-injection tests."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def release(self) -> None:
        self.pause_heartbeat()
        with self._mutex:
            if self._seq is None:
                return
            if not self._lost:
                try:
                    self.es.delete(index=LOCK_INDEX, id=self.name, if_seq_no=self._seq[0],
                                   if_primary_term=self._seq[1], refresh="true")
                except (ConflictError, NotFoundError):
                    pass  # taken over: it is not ours to delete
            self._seq = None

    def __enter__(self) -> "ReindexLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(ts)))


def force_unlock(es: Elasticsearch, name: str = "reindex") -> bool:
    try:
        es.delete(index=LOCK_INDEX, id=name, refresh="true")
        return True
    except NotFoundError:
        return False
