"""`facetrec events replay --since T`: re-apply logged event batches to the live user generation
(what a publish does on its own after a swap; for when that step failed or an encoder was missing)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from facetrec.settings import Settings


def _time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an ISO 8601 time, e.g. 2026-11-23T00:00:00Z") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def cmd_events_replay(args, settings: Settings) -> int:
    import sys

    from facetrec.es import alias_index, make_client
    from facetrec.user_events import UserEvents

    es = make_client(settings, request_timeout=120)
    index = args.user_index or alias_index(es, settings.user_alias)
    if index is None:
        raise RuntimeError(f"the alias {settings.user_alias} does not exist: publish a generation first")
    counts = UserEvents(es, settings).replay(index, args.since, progress=lambda m: print(f"facetrec: {m}",
                                                                                        file=sys.stderr))
    print(json.dumps({"user_index": index, **counts}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="the event log of the events API")
    esub = events.add_subparsers(dest="events_command", required=True)
    p = esub.add_parser("replay", help="re-apply logged batches with events newer than --since to the live user "
                                        "generation (idempotent: batches already there are skipped)")
    p.add_argument("--since", required=True, type=_time, help="ISO 8601 time; batches with a newer event are applied")
    p.add_argument("--user-index", help="a concrete user generation (default: the one the user alias names)")
    p.set_defaults(func=cmd_events_replay)
