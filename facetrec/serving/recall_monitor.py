"""Live recall monitor: a sampled fraction of served homepages is re-asked exactly, off the request path.

For a sampled page (``FACETREC_RECALL_SAMPLE_RATE``, default 1%), every row served by approximate
``knn`` is asked again as an exact ``script_score`` search with the same filters, exclusions, k
and user vector, on a background thread of the serving process. The row's id recall against the
exact answer,

    |served top n  ∩  exact top n| / n,   n = min(row size, hits of the exact search),

is sent as the DogStatsD distribution ``retrieval.recall`` tagged ``row``, ``index_type`` and
``mode``; the Datadog monitor in ``ops/datadog/monitors.json`` alerts below 0.9. What is compared is
the row's raw hit list (before cross-row de-duplication, which removes the same items from both).

The request path only draws a random number and, for a sampled page, hands the already-read
responses to a queue: a full queue drops the check (``retrieval.recall.dropped``), it never waits.
A check whose exact answer comes from another generation than the served hits (an alias swap in
between) is skipped (``retrieval.recall.skipped``), never reported as a miss.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from elasticsearch import Elasticsearch

from facetrec.catalog.rows import Row
from facetrec.es import script_lang as resolve_script_lang
from facetrec.metrics import Metrics
from facetrec.serving.hit_fields import hit_generation, hit_id, raw_hits
from facetrec.serving.homepage import SearchConfig, UserVector
from facetrec.serving.page_search import build_searches, row_mode

log = logging.getLogger("facetrec.recall")
MAX_PENDING = 4          # sampled pages waiting for their exact re-ask; more are dropped
EXACT_TIMEOUT_S = 10.0   # an exact re-ask scans the row's filtered set: give it time, off the request path


def row_recall(served_ids: Sequence[str], exact_ids: Sequence[str], size: int) -> float | None:
    """Id recall of a served row against the exact answer at the row's size (None: nothing to compare)."""
    n = min(size, len(exact_ids))
    if n == 0:
        return None
    return len(set(served_ids[:n]) & set(exact_ids[:n])) / n


def _generations(response: dict) -> set[str | None]:
    return {hit_generation(hit) for hit in raw_hits(response.get("hits", {}).get("hits", []))}


class RecallMonitor:
    """Samples served pages and measures their knn rows' recall in the background (one per process)."""

    def __init__(self, es: Elasticsearch, target: SearchConfig, metrics: Metrics, sample_rate: float, index_type: str,
                 rng: random.Random | None = None):
        self.es = es
        self.target = target
        self.metrics = metrics
        self.sample_rate = sample_rate
        self.index_type = index_type
        self.rng = rng or random.Random()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._executor: ThreadPoolExecutor | None = None   # made on first use: after gunicorn's fork
        self._lock = threading.Lock()

    def observe(self, user: UserVector | None, rows: Sequence[Row], user_filters: Sequence[dict], mode: str | None,
                sizes: dict[str, int] | None, responses: list, interests: dict[str, int] | None = None) -> None:
        """Called by ``recommend`` with what it served; returns at once."""
        if user is None or self.sample_rate <= 0 or self.rng.random() >= self.sample_rate:
            return
        if not any(row_mode(row, mode, self.target) == "knn" for row in rows):
            return
        if not self._pending.acquire(blocking=False):
            self.metrics.increment("retrieval.recall.dropped")
            return
        try:
            self._pool().submit(self._check, user, list(rows), list(user_filters), mode, dict(sizes or {}), responses,
                                dict(interests or {}))
        except RuntimeError:  # the pool is shutting down
            self._pending.release()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recall-monitor")
            return self._executor

    def _check(self, user: UserVector, rows: list[Row], user_filters: list[dict], mode: str | None,
               sizes: dict[str, int], served: list, interests: dict[str, int] | None = None) -> None:
        try:
            self.check(user, rows, user_filters, mode, sizes, served, interests)
        except Exception as exc:  # noqa: BLE001 - a failed check is counted and logged, never raised
            self.metrics.increment("retrieval.recall.failed", [f"error:{type(exc).__name__}"])
            log.warning("recall check failed", extra={"event": "recall_check_failed", "detail": str(exc)[:300]})
        finally:
            self._pending.release()

    def check(self, user: UserVector, rows: Sequence[Row], user_filters: Sequence[dict], mode: str | None,
              sizes: dict[str, int] | None, served: list, interests: dict[str, int] | None = None) -> dict[str, float]:
        """Re-ask the page's knn rows exactly and report each row's recall; returns {row id: recall}."""
        sizes = dict(sizes or {})
        knn_rows = [(row, response) for row, response in zip(rows, served)
                    if row_mode(row, mode, self.target) == "knn" and "error" not in response]
        if not knn_rows:
            return {}
        exact_target = dataclasses.replace(self.target, request_timeout_s=EXACT_TIMEOUT_S)
        lang = resolve_script_lang(self.es, exact_target.script_lang, EXACT_TIMEOUT_S)
        # The same k per row as served (build_searches over the whole page), then only the knn rows.
        # Each row with the interest it was served with (a multi-interest user: facetrec.serving.interests).
        searches = build_searches(rows, user, user_filters, exact_target, mode="script_score", sizes=sizes,
                                  script_lang=lang, interests=interests or {})
        wanted = {id(row) for row, _ in knn_rows}
        lines = [line for i, row in enumerate(rows) if id(row) in wanted for line in searches[2 * i:2 * i + 2]]
        exact = self.es.options(request_timeout=EXACT_TIMEOUT_S).msearch(searches=lines)["responses"]
        recalls: dict[str, float] = {}
        for (row, response), truth in zip(knn_rows, exact):
            if "error" in truth:
                self.metrics.increment("retrieval.recall.failed", [f"row:{row.id}", "error:exact_search"])
                continue
            if len((_generations(response) | _generations(truth)) - {None}) > 1:
                self.metrics.increment("retrieval.recall.skipped", [f"row:{row.id}", "reason:generation_changed"])
                continue
            size = sizes.get(row.id, row.size)
            value = row_recall([h["_id"] for h in response["hits"]["hits"]],
                               [hit_id(h) for h in truth["hits"]["hits"]], size)
            if value is None:
                continue
            recalls[row.id] = value
            self.metrics.distribution("retrieval.recall", value,
                                      [f"row:{row.id}", f"index_type:{self.index_type}", "mode:knn"])
        return recalls

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until no sampled page is waiting or being checked (tests, shutdown). False on timeout."""
        deadline = time.monotonic() + timeout_s
        taken = 0
        try:
            while taken < MAX_PENDING:
                if not self._pending.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return False
                taken += 1
            return True
        finally:
            for _ in range(taken):
                self._pending.release()

    def close(self, wait: bool = True) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=wait)
                self._executor = None
