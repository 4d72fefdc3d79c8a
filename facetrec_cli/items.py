"""`facetrec items apply --file changes.jsonl | replay | stream`: item changes during the day (takedowns,
updates, new items), as the service's /v1/items takes them (thin wrappers over facetrec.items)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facetrec.settings import Settings
from facetrec_cli.streaming import run_until_stopped
from facetrec_cli.streaming import say as _say


def _items(settings: Settings):
    """ItemChanges for control and every live arm, and the live generation's catalog schema."""
    from facetrec.catalog.facets import FacetCache
    from facetrec.catalog.rows import RowCatalog
    from facetrec.es import alias_index, make_client
    from facetrec.experiments import ExperimentCache
    from facetrec.items.apply import ItemChanges
    from facetrec.model.user_encoder import EncoderRegistry

    es = make_client(settings, request_timeout=120)
    experiments = ExperimentCache(es, settings, settings.experiment_refresh_s)
    items = ItemChanges(es, settings, EncoderRegistry(settings.models_root, kind="item"),
                        arm_item_aliases=experiments.arm_item_aliases)
    facets = FacetCache(es, settings.item_alias, RowCatalog.from_settings(settings))
    return es, items, lambda: facets.catalog_of(alias_index(es, settings.item_alias)).schema


def cmd_items_apply(args, settings: Settings) -> int:
    from facetrec.errors import BadRequest
    from facetrec.items.changes import parse_change

    _, items, schema = _items(settings)
    lines = [line for line in Path(args.file).read_text().splitlines() if line.strip()]
    changes = []
    for n, line in enumerate(lines, 1):   # every line checked before any is applied
        try:
            changes.append(parse_change(json.loads(line), schema(), f"line {n}"))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"line {n}", f"not JSON ({exc})") from None
    counts = {"applied": 0, "duplicate": 0}
    for change in changes:
        counts[items.submit(change).status] += 1
    print(json.dumps({"changes": len(changes), **counts}))
    return 0


def cmd_items_replay(args, settings: Settings) -> int:
    from facetrec.es import alias_index

    es, items, _ = _items(settings)
    index = args.item_index or alias_index(es, settings.item_alias)
    if index is None:
        raise RuntimeError(f"the alias {settings.item_alias} does not exist: publish a generation first")
    since = None
    if args.since:
        from facetrec_cli.events import _time

        since = _time(args.since)
    print(json.dumps({"item_index": index, **items.replay(index, since, progress=_say)}))
    return 0


def cmd_items_stream(args, settings: Settings) -> int:
    from facetrec.metrics import make_metrics
    from ingest.embedding.spark import make_spark_session
    from ingest.streaming.item_changes_stream import start_item_changes_stream

    _, items, schema = _items(settings)
    spark = make_spark_session("facetrec-item-changes-stream")
    query, writer = start_item_changes_stream(spark, args.source, args.checkpoint, items, schema,
                                              available_now=args.available_now, interval_s=args.interval_s,
                                              metrics=make_metrics(settings, "stream"), progress=_say)
    _say(f"stream {writer.stream}: reading {args.source}, checkpoint {args.checkpoint}")
    return run_until_stopped(spark, query, writer)


def register(sub: argparse._SubParsersAction) -> None:
    items = sub.add_parser("items", help="item changes during the day: apply a file, replay, stream",
                           description="Item changes as POST /v1/items/changes takes them (one JSON object a line: "
                                       '{"op": "put"|"patch"|"delete", "item_id", "item": {...}, "change_id"}): logged, '
                                       "then applied to every live pair.")
    isub = items.add_subparsers(dest="items_command", required=True)
    p = isub.add_parser("apply", help="apply a JSON lines file of changes (every line checked first)",
                        description="Check every line of a JSON lines file of item changes against the live "
                                    "catalog schema, then log and apply them in order to every live pair (control "
                                    "and each experiment arm); prints what each did.")
    p.add_argument("--file", required=True, type=Path, help="JSON lines, one change a line")
    p.set_defaults(func=cmd_items_apply)
    p = isub.add_parser("replay", help="re-apply logged changes (and every takedown in effect) to the live item "
                                        "generation: what a publish and a rollback do by themselves",
                        description="Re-apply the item changes logged after --since, and every takedown in effect, "
                                    "to the live item generation (or --item-index): what a publish and a rollback do "
                                    "by themselves, for when that step failed. Idempotent.")
    p.add_argument("--since", help="ISO 8601 time: changes received after it (default: all)")
    p.add_argument("--item-index", help="a concrete item generation (default: the one the item alias names)")
    p.set_defaults(func=cmd_items_replay)
    p = isub.add_parser("stream", help="apply change files landing in a directory (Spark Structured Streaming)",
                        description="A Spark Structured Streaming job: each JSON lines file of item changes landing "
                                    "in --source is logged and applied in order; the checkpoint makes a restart "
                                    "apply nothing twice.")
    p.add_argument("--source", required=True, help="directory the change files (JSON lines) land in")
    p.add_argument("--checkpoint", required=True, help="the stream's checkpoint (restarts apply nothing twice)")
    p.add_argument("--available-now", action="store_true", help="process the files there now, then stop")
    p.add_argument("--interval-s", type=float, default=1.0, help="micro-batch interval (default 1 s)")
    p.set_defaults(func=cmd_items_stream)
