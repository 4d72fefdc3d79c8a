"""A re-index lock: one document in the ``facetrec-locks`` index, created with op_type=create.

Two runs cannot interleave: the second finds the document and fails fast. A lock is taken over
only when it is stale: past its TTL, or held by a process on this host that no longer exists
(a loader killed with SIGKILL). Release and takeover use optimistic concurrency
(``if_seq_no``/``if_primary_term``), so a run never deletes a lock that another run holds.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from elasticsearch import ConflictError, Elasticsearch, NotFoundError

from facetrec.process import pid_exists

LOCK_INDEX = "facetrec-locks"


class LockHeld(RuntimeError):
    pass


class ReindexLock:
    def __init__(self, es: Elasticsearch, name: str = "reindex", ttl_s: float = 4 * 3600):
        self.es, self.name, self.ttl_s = es, name, ttl_s
        self.token = uuid.uuid4().hex
        self._seq: tuple[int, int] | None = None

    def _ensure_index(self) -> None:
        if not self.es.indices.exists(index=LOCK_INDEX):
            self.es.options(ignore_status=400).indices.create(
                index=LOCK_INDEX, settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"})

    def acquire(self) -> "ReindexLock":
        self._ensure_index()
        for _ in range(3):
            now = time.time()
            doc = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                   "acquired_at": now, "expires_at": now + self.ttl_s}
            try:
                resp = self.es.create(index=LOCK_INDEX, id=self.name, document=doc, refresh="true")
                self._seq = (resp["_seq_no"], resp["_primary_term"])
                return self
            except ConflictError:
                pass
            try:
                held = self.es.get(index=LOCK_INDEX, id=self.name)
            except NotFoundError:
                continue  # released in between: try again
            holder = held["_source"]
            reason = _stale_reason(holder)
            if reason is None:
                raise LockHeld(
                    f"another re-index holds the lock '{self.name}' (host {holder['host']}, pid {holder['pid']}, "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(holder['acquired_at']))} UTC); "
                    f"wait for it to finish, or if it is dead run `facetrec index unlock`")
            try:
                self.es.delete(index=LOCK_INDEX, id=self.name, if_seq_no=held["_seq_no"],
                               if_primary_term=held["_primary_term"], refresh="true")
                print(f"facetrec: took over a stale re-index lock ({reason})")
            except (ConflictError, NotFoundError):
                pass
        raise LockHeld(f"could not acquire the lock '{self.name}': it keeps changing hands")

    def release(self) -> None:
        if self._seq is None:
            return
        try:
            self.es.delete(index=LOCK_INDEX, id=self.name, if_seq_no=self._seq[0], if_primary_term=self._seq[1],
                           refresh="true")
        except (ConflictError, NotFoundError):
            pass
        self._seq = None

    def __enter__(self) -> "ReindexLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _stale_reason(holder: dict) -> str | None:
    if holder.get("expires_at", 0) < time.time():
        return "expired"
    if holder.get("host") == socket.gethostname() and not pid_exists(int(holder.get("pid", 0))):
        return f"pid {holder.get('pid')} on this host no longer exists"
    return None


def force_unlock(es: Elasticsearch, name: str = "reindex") -> bool:
    try:
        es.delete(index=LOCK_INDEX, id=name, refresh="true")
        return True
    except NotFoundError:
        return False
