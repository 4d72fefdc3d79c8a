"""Item changes as a Spark Structured Streaming job (``facetrec items stream``).

Changes arrive as JSON lines files in a directory, one change a line, as the batch endpoint takes
them (``{"op": put|patch|delete, "item_id", "item", "change_id"}``). Each micro-batch is, on the
driver: parsed and checked against the live generation's catalog schema (a bad line is not applied;
it is counted and written to ``<checkpoint>/rejected/epoch-<n>.jsonl`` with its reason), then each
change is logged and applied to every live pair (``ItemChanges.submit``), in the order of the files.

**Exactly once.** A line without a ``change_id`` gets one from the stream's id and the line's content
(a hash), so a micro-batch run again after a crash logs the same ids and applies nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from facetrec.catalog.schema import CatalogSchema
from facetrec.errors import BadRequest
from facetrec.items.apply import ItemChanges
from facetrec.items.changes import ItemChange, parse_change
from facetrec.metrics import NoMetrics
from ingest.streaming.user_events_stream import stream_id

log = logging.getLogger("facetrec.stream")


def parse_lines(lines: list[str], stream: str, schema: CatalogSchema) -> tuple[list[ItemChange], list[dict]]:
    """The changes of a micro-batch's lines, and the rejected lines with their reasons."""
    changes, rejected = [], []
    for line in lines:
        try:
            raw = json.loads(line)
            if isinstance(raw, dict) and raw.get("change_id") is None:
                raw = {**raw, "change_id": f"{stream}-{hashlib.sha1(line.encode()).hexdigest()[:16]}"}
            changes.append(parse_change(raw, schema, "change"))
        except json.JSONDecodeError as exc:
            rejected.append({"line": line[:1000], "field": "line", "reason": f"not JSON: {exc}"})
        except BadRequest as exc:
            rejected.append({"line": line[:1000], "field": exc.field, "reason": exc.message})
    return changes, rejected


class ChangesWriter:
    """The ``foreachBatch`` function: applies one micro-batch of item changes."""

    def __init__(self, items: ItemChanges, schema: Callable[[], CatalogSchema], stream: str, checkpoint: str | Path,
                 metrics=None, progress: Callable[[str], None] | None = None):
        self.items, self.schema, self.stream = items, schema, stream
        self.rejected_dir = Path(checkpoint) / "rejected"
        self.metrics = metrics or NoMetrics()
        self.progress = progress
        self.totals = {"epochs": 0, "changes": 0, "rejected": 0, "applied": 0, "duplicate": 0}

    def __call__(self, df, epoch_id: int) -> None:
        self.apply([row["value"] for row in df.select("value").collect() if row["value"].strip()], epoch_id)

    def apply(self, lines: list[str], epoch_id: int) -> dict:
        started = time.perf_counter()
        changes, rejected = parse_lines(lines, self.stream, self.schema())
        if rejected:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            (self.rejected_dir / f"epoch-{epoch_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected))
        counts = {"changes": len(changes), "rejected": len(rejected), "applied": 0, "duplicate": 0}
        for change in changes:
            counts[self.items.submit(change).status] += 1
        self.totals["epochs"] += 1
        for key, value in counts.items():
            self.totals[key] += value
        seconds = time.perf_counter() - started
        self.metrics.timing("stream.item_changes", seconds * 1000)
        log.info("item changes applied", extra={"event": "stream_item_changes", "epoch": epoch_id, **counts})
        if self.progress and lines:
            self.progress(f"epoch {epoch_id}: {len(changes)} item changes in {seconds:.2f} s: {counts['applied']} "
                          f"applied, {counts['duplicate']} already logged, {len(rejected)} rejected")
        return counts


def start_item_changes_stream(spark, source: str | Path, checkpoint: str | Path, items: ItemChanges,
                              schema: Callable[[], CatalogSchema], *, available_now: bool = False,
                              interval_s: float = 1.0, metrics=None, progress: Callable[[str], None] | None = None):
    """Start the stream; returns (StreamingQuery, ChangesWriter)."""
    frame = spark.readStream.text(str(source))
    writer = ChangesWriter(items, schema, stream_id(checkpoint), checkpoint, metrics=metrics, progress=progress)
    query = (frame.writeStream.foreachBatch(writer).option("checkpointLocation", str(checkpoint))
             .queryName(f"facetrec-item-changes-{writer.stream}"))
    query = query.trigger(availableNow=True) if available_now else query.trigger(processingTime=f"{interval_s} seconds")
    return query.start(), writer
