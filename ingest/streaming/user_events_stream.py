"""The near-real-time user-vector update as a Spark Structured Streaming job.

Events arrive as JSON lines files in a directory (``{"user_id", "item_id", "ts"}``; ``ts`` ISO 8601
with a zone or epoch milliseconds), written there by whatever collects them (a log shipper, a
Kafka sink). Each micro-batch is, on the driver:

1. validated: a bad line (missing field, bad id, a time without a zone or too far ahead) is not
   applied; it is counted and written to ``<checkpoint>/rejected/epoch-<n>.jsonl``;
2. grouped per user into ONE event batch per user, whose batch id is ``<stream id>-<epoch id>``;
3. logged in the event log (one ``_bulk``; what a publish replays after an alias swap);
4. applied (``UserEvents.apply_many``): one ``mget`` of the users, one encoder call, one ``_bulk``
   of the new user documents with ``if_seq_no``/``if_primary_term`` (a user the API wrote
   meanwhile is re-read and retried alone).

**Exactly once.** Spark writes a micro-batch's source offsets to the checkpoint before running it
and marks it committed after ``foreachBatch`` returns. A job killed in between runs the same epoch
again over the same files on restart; the batch ids come out the same (the stream id lives in the
checkpoint, the epoch id is Spark's), and a user document remembers the batch ids applied to it,
so the second run writes nothing twice. A new checkpoint is a new stream id: its epochs never
collide with an old stream's.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facetrec.errors import BadRequest
from facetrec.events.apply import UserEvents
from facetrec.events.batch import Event, EventBatch, check_item_id, check_user_id, parse_event_time
from facetrec.metrics import NoMetrics
from facetrec.model.ties import tie_key

log = logging.getLogger("facetrec.stream")

EVENT_SCHEMA = "user_id STRING, item_id STRING, ts STRING"
STREAM_ID_FILE = "facetrec_stream_id"
USERS_PER_WRITE = 1000      # users per mget / encoder call / _bulk inside one micro-batch


def stream_id(checkpoint: str | Path) -> str:
    """The stream's identity, kept beside Spark's own checkpoint files (made once, atomically)."""
    path = Path(checkpoint) / STREAM_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(f"s{uuid.uuid4().hex[:12]}\n")
    return path.read_text().strip()


def event_batches(rows: Iterable[Any], stream: str, epoch_id: int, now: datetime
                  ) -> tuple[list[EventBatch], list[dict]]:
    """One event batch per user from a micro-batch's rows (``user_id``, ``item_id``, ``ts``), with
    the deterministic batch id ``<stream>-<epoch>``; and the rejected rows, each with its reason.
    A user's events are ordered by time, same-time events by the seeded hash the ETL orders them by
    (``facetrec.model.ties``), so a re-run epoch builds the same batches and carries no id order."""
    per_user: dict[str, list[Event]] = {}
    rejected: list[dict] = []
    for row in rows:
        user_id, item_id, ts = row["user_id"], row["item_id"], row["ts"]
        try:
            check_user_id(user_id)
            check_item_id(item_id)
            if ts is None:
                raise BadRequest("ts", "missing")
            try:
                at = parse_event_time(int(ts) if ts.lstrip("-").isdigit() else ts, now)
            except ValueError as exc:
                raise BadRequest("ts", str(exc)) from None
        except BadRequest as exc:
            rejected.append({"user_id": user_id, "item_id": item_id, "ts": ts, "field": exc.field, "reason": exc.message})
            continue
        per_user.setdefault(user_id, []).append(Event(item_id, at))
    batches = [EventBatch(user, f"{stream}-{epoch_id}", tuple(sorted(events, key=lambda e, u=user: (e.at, tie_key(u, e.item_id)))))
               for user, events in sorted(per_user.items())]
    return batches, rejected


class MicroBatchWriter:
    """The ``foreachBatch`` function: applies one micro-batch and reports what it did."""

    def __init__(self, events: UserEvents, stream: str, checkpoint: str | Path, metrics=None,
                 progress: Callable[[str], None] | None = None, users_per_write: int = USERS_PER_WRITE):
        self.events = events
        self.stream = stream
        self.rejected_dir = Path(checkpoint) / "rejected"
        self.metrics = metrics or NoMetrics()
        self.progress = progress
        self.users_per_write = users_per_write
        self.micro_batches: list[dict] = []   # what each micro-batch of this run did (counts, seconds)

    @property
    def totals(self) -> dict:
        """This run's micro-batches summed (``epochs``: how many ran)."""
        keys = ("events", "rejected", "users", "applied", "duplicate", "no_known_items")
        return {"epochs": len(self.micro_batches), **{k: sum(b[k] for b in self.micro_batches) for k in keys}}

    def __call__(self, df, epoch_id: int) -> None:
        self.apply(df.select("user_id", "item_id", "ts").collect(), epoch_id)

    def apply(self, rows: list, epoch_id: int) -> dict:
        started = time.perf_counter()
        batches, rejected = event_batches(rows, self.stream, epoch_id, datetime.now(timezone.utc))
        if rejected:
            self._write_rejected(epoch_id, rejected)
        counts = {"epoch": epoch_id, "events": len(rows), "rejected": len(rejected), "users": len(batches),
                  "applied": 0, "duplicate": 0, "no_known_items": 0}
        for start in range(0, len(batches), self.users_per_write):
            chunk = batches[start:start + self.users_per_write]
            self.events.record_many(chunk)
            for result in self.events.apply_many(chunk):
                counts[result.status] += 1
            for alias in self.events.arm_user_aliases().values():   # every experiment arm's pair too
                self.events.apply_many(chunk, user_index=alias)
        seconds = time.perf_counter() - started
        counts["seconds"] = seconds
        self.micro_batches.append(counts)
        self.metrics.timing("stream.micro_batch", seconds * 1000)
        self.metrics.increment("stream.events", value=len(rows) - len(rejected))
        if rejected:
            self.metrics.increment("stream.events.rejected", value=len(rejected))
        for status in ("applied", "duplicate", "no_known_items"):
            if counts[status]:
                self.metrics.increment("stream.user_batches", [f"status:{status}"], value=counts[status])
        log.info("micro-batch applied", extra={"event": "stream_micro_batch", **counts})
        if self.progress and rows:
            rate = len(rows) / seconds if seconds > 0 else float("inf")
            self.progress(f"epoch {epoch_id}: {len(rows)} events of {len(batches)} users in {seconds:.2f} s "
                          f"({rate:,.0f} events/s): {counts['applied']} applied, {counts['duplicate']} already "
                          f"applied, {counts['no_known_items']} with no known item, {len(rejected)} rejected")
        return counts

    def _write_rejected(self, epoch_id: int, rejected: list[dict]) -> None:
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / f"epoch-{epoch_id}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rejected))
        tmp.replace(path)
        log.warning("rejected events", extra={"event": "stream_rejected", "epoch": epoch_id, "count": len(rejected),
                                              "first": rejected[0], "file": str(path)})


def start_user_events_stream(spark, source: str | Path, checkpoint: str | Path, events: UserEvents, *,
                             available_now: bool = False, interval_s: float = 1.0,
                             max_files_per_trigger: int | None = None, metrics=None,
                             progress: Callable[[str], None] | None = None):
    """Start the stream; returns (StreamingQuery, MicroBatchWriter). ``available_now``: process what
    is in ``source`` now (in micro-batches of ``max_files_per_trigger`` files) and stop."""
    reader = spark.readStream.schema(EVENT_SCHEMA).option("mode", "PERMISSIVE")
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", int(max_files_per_trigger))
    frame = reader.json(str(source))
    writer = MicroBatchWriter(events, stream_id(checkpoint), checkpoint, metrics=metrics, progress=progress)
    query = (frame.writeStream.foreachBatch(writer).option("checkpointLocation", str(checkpoint))
             .queryName(f"facetrec-user-events-{writer.stream}"))
    query = query.trigger(availableNow=True) if available_now else query.trigger(processingTime=f"{interval_s} seconds")
    return query.start(), writer
