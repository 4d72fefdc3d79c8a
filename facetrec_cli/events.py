"""`facetrec events replay --since T`: re-apply logged event batches to the live user generation
(what a publish does on its own after a swap; for when that step failed or an encoder was missing).
`facetrec events stream --source DIR --checkpoint DIR`: the streaming user-vector update."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from facetrec.settings import Settings
from facetrec_cli.streaming import run_until_stopped, say


def _time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an ISO 8601 time, e.g. 2026-11-23T00:00:00Z") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def cmd_events_replay(args, settings: Settings) -> int:
    import sys

    from facetrec.es import alias_index, make_client
    from facetrec.events.apply import UserEvents

    es = make_client(settings, request_timeout=120)
    index = args.user_index or alias_index(es, settings.user_alias)
    if index is None:
        raise RuntimeError(f"the alias {settings.user_alias} does not exist: publish a generation first")
    counts = UserEvents(es, settings).replay(index, args.since, progress=lambda m: print(f"facetrec: {m}",
                                                                                        file=sys.stderr))
    print(json.dumps({"user_index": index, **counts}))
    return 0


def cmd_events_stream(args, settings: Settings) -> int:
    """Run the streaming user-vector update until stopped (Ctrl-C, or any kill: a micro-batch cut
    short runs again on restart from the checkpoint and applies nothing twice)."""
    from facetrec.es import make_client
    from facetrec.events.apply import UserEvents
    from facetrec.experiments import ExperimentCache
    from facetrec.metrics import make_metrics
    from facetrec.model.user_encoder import EncoderRegistry
    from ingest.embedding.spark import make_spark_session
    from ingest.streaming.user_events_stream import start_user_events_stream

    es = make_client(settings, request_timeout=120)
    experiments = ExperimentCache(es, settings, settings.experiment_refresh_s)
    events = UserEvents(es, settings, EncoderRegistry(settings.models_root),
                        arm_user_aliases=experiments.arm_user_aliases)
    spark = make_spark_session("facetrec-user-events-stream")
    query, writer = start_user_events_stream(
        spark, args.source, args.checkpoint, events, available_now=args.available_now, interval_s=args.interval_s,
        max_files_per_trigger=args.max_files_per_trigger, metrics=make_metrics(settings, "stream"), progress=say)
    say(f"stream {writer.stream}: reading {args.source}, checkpoint {args.checkpoint}"
        + (" (what is there now, then stop)" if args.available_now else f" (every {args.interval_s} s; Ctrl-C stops)"))
    return run_until_stopped(spark, query, writer)


def register(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="the event log of the events API: replay, stream",
                            description="The event batches of POST /v1/users/<id>/events (logged before they are "
                                        "applied) and the streaming job that applies event files.")
    esub = events.add_subparsers(dest="events_command", required=True)
    p = esub.add_parser("replay", help="re-apply logged batches with events newer than --since to the live user "
                                        "generation (idempotent: batches already there are skipped)",
                        description="Re-apply logged event batches with an event newer than --since to the live user "
                                    "generation: what a publish does by itself after a swap, for when that step failed "
                                    "or an encoder was missing. Batches already there are skipped.")
    p.add_argument("--since", required=True, type=_time, help="ISO 8601 time; batches with a newer event are applied")
    p.add_argument("--user-index", help="a concrete user generation (default: the one the user alias names)")
    p.set_defaults(func=cmd_events_replay)
    p = esub.add_parser("stream", help="apply event files (JSON lines: user_id, item_id, ts) landing in a directory "
                                       "to the live user generation, as a Spark Structured Streaming job",
                        description="Apply event files (JSON lines with user_id, item_id, ts) landing in a directory to "
                                    "the live user generation, as a Spark Structured Streaming job; a restart resumes "
                                    "at the checkpoint and applies nothing twice.")
    p.add_argument("--source", required=True, help="directory the event files land in")
    p.add_argument("--checkpoint", required=True, help="the stream's checkpoint directory (keep it: restarts "
                                                       "resume there and apply nothing twice)")
    p.add_argument("--available-now", action="store_true", help="process the files there now, then stop")
    p.add_argument("--interval-s", type=float, default=1.0, help="micro-batch interval (default 1 s)")
    p.add_argument("--max-files-per-trigger", type=int, help="files per micro-batch (default: all new files)")
    p.set_defaults(func=cmd_events_stream)
