"""Bulk-load item and user documents into one index generation.

The same code runs in one process (``bulk_load``) and inside Spark, where each partition streams
its rows through it (``spark_load``), so a catalog that outgrows one machine loads from a Spark
cluster into a multi-node Elasticsearch cluster.

Nothing is swallowed: documents with an unusable vector are counted and named in the report
(``invalid``), and every per-document bulk failure is collected (``failed``). 429 rejections are
retried with exponential backoff by the client helper. ``streams`` > 1 sends that many bulk requests
at once from one shared, ordered stream of records (the node indexes one while the next is built).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping

from elasticsearch import Elasticsearch, helpers
from tqdm import tqdm

from facetrec.es import serializers
from facetrec.items.documents import ITEM_BASE_FIELDS, InvalidDocument, item_document, user_document

MAX_REPORTED_IDS = 50


@dataclasses.dataclass
class LoadReport:
    index: str
    indexed: int = 0
    invalid: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (id, reason)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)    # (id, bulk error)
    invalid_count: int = 0
    failed_count: int = 0
    seconds: float = 0.0

    @property
    def attempted(self) -> int:
        return self.indexed + self.invalid_count + self.failed_count

    @property
    def docs_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def count_invalid(self, doc_id: str, reason: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < MAX_REPORTED_IDS:
            self.invalid.append((doc_id, reason))

    def count_sent(self, ok: bool, item: Mapping[str, Any]) -> None:
        """Count one document's bulk outcome (``streaming_bulk``'s ``(ok, item)``)."""
        if ok:
            self.indexed += 1
            return
        self.failed_count += 1
        result = next(iter(item.values()))
        if len(self.failed) < MAX_REPORTED_IDS:
            self.failed.append((str(result.get("_id")), str(result.get("error"))))

    def merge(self, other: "LoadReport") -> "LoadReport":
        self.indexed += other.indexed
        self.invalid_count += other.invalid_count
        self.failed_count += other.failed_count
        self.invalid = (self.invalid + other.invalid)[:MAX_REPORTED_IDS]
        self.failed = (self.failed + other.failed)[:MAX_REPORTED_IDS]
        self.seconds = max(self.seconds, other.seconds)
        return self

    def summary(self) -> str:
        return (f"{self.index}: {self.indexed} indexed, {self.invalid_count} invalid, {self.failed_count} failed "
                f"in {self.seconds:.1f}s ({self.docs_per_s:,.0f} docs/s)")


DOCUMENT_BUILDERS: dict[str, Callable[..., tuple[str, dict]]] = {"item": item_document, "user": user_document}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

class _SharedStream:
    """One iterator consumed by several bulk streams: each takes the next action under a lock.
    ``stop()`` ends it for every stream (one stream failed: the others stop sending)."""

    def __init__(self, iterable: Iterable[dict]):
        self._it = iter(iterable)
        self._lock = threading.Lock()
        self._stopped = False

    def __iter__(self) -> "_SharedStream":
        return self

    def __next__(self) -> dict:
        with self._lock:
            if self._stopped:
                raise StopIteration
            return next(self._it)

    def stop(self) -> None:
        self._stopped = True


def bulk_load(es: Elasticsearch, index: str, kind: str, records: Iterable[Mapping[str, Any]], *, generation: str,
              dims: int, require_unit: bool = False, chunk_docs: int = 1000, chunk_bytes: int = 20 * 1024 * 1024,
              max_retries: int = 6, initial_backoff: float = 0.5, progress: bool = True,
              total: int | None = None, streams: int = 1, doc_fields: Mapping[str, Any] | None = None,
              check: Callable[[str], None] | None = None, item_vector_scale: float | None = None,
              exact_copy: bool = False, partitions: Mapping | None = None,
              fields: tuple[tuple[str, str], ...] = ITEM_BASE_FIELDS) -> LoadReport:
    """Stream ``records`` into ``index`` with explicit ``_id``s, ``streams`` bulk requests in flight.
    ``doc_fields`` are added to every document (a user generation's ``item_generation``); item
    vectors are stored reduced when ``item_vector_scale`` is given (``facetrec.serving.mips``) and twice with
    ``exact_copy`` (``item_document``); ``check``
    runs before each document is sent and stops the load by raising (the re-index lock's lease).
    Returns the report; never raises for per-document problems (the validation gate decides what
    they mean)."""
    if streams < 1:
        raise ValueError(f"streams must be at least 1, got {streams}")
    report = LoadReport(index=index)
    build = DOCUMENT_BUILDERS[kind]
    if kind == "item":
        build = partial(item_document, item_vector_scale=item_vector_scale, exact_copy=exact_copy,
                        partitions=partitions, fields=fields)
    actions = _actions(records, build, report, index=index, kind=kind, generation=generation, dims=dims,
                       require_unit=require_unit, doc_fields=doc_fields, check=check)
    bar = tqdm(total=total, desc=f"loading {index}", unit="doc", disable=not progress, file=sys.stderr,
               mininterval=1.0)
    counted = threading.Lock()

    def send(stream: Iterable[dict]) -> None:
        for ok, item in helpers.streaming_bulk(es, stream, chunk_size=chunk_docs, max_chunk_bytes=chunk_bytes,
                                               raise_on_error=False, raise_on_exception=True,
                                               max_retries=max_retries, initial_backoff=initial_backoff,
                                               max_backoff=30):
            with counted:
                report.count_sent(ok, item)
                bar.update(1)

    started = time.perf_counter()
    try:
        if streams == 1:
            send(actions)
        else:
            _send_in_parallel(actions, send, streams)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    if progress:
        print(f"facetrec: {report.summary()}", file=sys.stderr)
    return report


def _actions(records: Iterable[Mapping[str, Any]], build: Callable[..., tuple[str, dict]], report: LoadReport, *,
             index: str, kind: str, generation: str, dims: int, require_unit: bool,
             doc_fields: Mapping[str, Any] | None, check: Callable[[str], None] | None) -> Iterator[dict]:
    """The bulk actions of ``records``; a record that makes no document is counted in ``report``."""
    for record in records:
        try:
            doc_id, source = build(record, generation, dims, require_unit)
        except (InvalidDocument, KeyError, TypeError, ValueError) as exc:
            report.count_invalid(str(record.get(f"{kind}_id")), str(exc))
            continue
        if doc_fields:
            source.update(doc_fields)
        if check is not None:
            check(f"loading {index}")
        yield {"_index": index, "_id": doc_id, "_source": source}


def _send_in_parallel(actions: Iterator[dict], send: Callable[[Iterable[dict]], None], streams: int) -> None:
    """``streams`` bulk streams over one shared stream of actions; one failing stops them all."""
    shared = _SharedStream(actions)

    def send_shared() -> None:
        try:
            send(shared)
        except BaseException:
            shared.stop()
            raise

    with ThreadPoolExecutor(streams, thread_name_prefix="bulk") as pool:
        try:
            for done in [pool.submit(send_shared) for _ in range(streams)]:
                done.result()
        except BaseException:  # a failed stream, Ctrl-C or SIGTERM: the others stop sending too
            shared.stop()
            raise


def _load_partition(rows: Iterator[Any], *, es_url: str, client_options: dict, index: str, kind: str,
                    generation: str, dims: int, require_unit: bool, doc_fields: dict | None,
                    item_vector_scale: float | None = None, exact_copy: bool = False,
                    partitions: dict | None = None, fields: tuple = ITEM_BASE_FIELDS) -> Iterator[dict]:
    """Runs on a Spark executor: one client per partition, the same bulk code."""
    es = Elasticsearch([url.strip() for url in es_url.split(",")], serializers=serializers(), **client_options)
    try:
        report = bulk_load(es, index, kind, (row.asDict(recursive=True) for row in rows), generation=generation,
                           dims=dims, require_unit=require_unit, progress=False, doc_fields=doc_fields,
                           item_vector_scale=item_vector_scale, exact_copy=exact_copy, partitions=partitions,
                           fields=fields)
    finally:
        es.close()
    yield dataclasses.asdict(report)


def spark_load(df, *, es_url: str, index: str, kind: str, generation: str, dims: int, require_unit: bool = False,
               client_options: dict | None = None, doc_fields: dict | None = None,
               check: Callable[[str], None] | None = None, item_vector_scale: float | None = None,
               exact_copy: bool = False, partitions: dict | None = None, fields: tuple = ITEM_BASE_FIELDS) -> LoadReport:
    """Load a Spark DataFrame partition by partition (in parallel on the executors). ``check`` runs
    on the driver before and after the job (executors cannot see the driver's lock)."""
    if check is not None:
        check(f"loading {index}")
    fn = partial(_load_partition, es_url=es_url, client_options=client_options or {"request_timeout": 120},
                 index=index, kind=kind, generation=generation, dims=dims, require_unit=require_unit,
                 doc_fields=doc_fields, item_vector_scale=item_vector_scale, exact_copy=exact_copy,
                 partitions=partitions, fields=fields)
    started = time.perf_counter()
    total = LoadReport(index=index)
    for part in df.rdd.mapPartitions(fn).collect():
        part_report = LoadReport(**{**part, "invalid": [tuple(x) for x in part["invalid"]],
                                    "failed": [tuple(x) for x in part["failed"]]})
        total.merge(part_report)
    total.seconds = time.perf_counter() - started
    if check is not None:
        check(f"loading {index}")
    return total
