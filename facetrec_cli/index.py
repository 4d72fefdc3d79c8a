"""`facetrec index status | rollback | unlock | publish`: thin wrappers over ingest.indexing."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from facetrec.settings import Settings
from facetrec_cli.table import format_table


def _client(settings: Settings, timeout: float = 120):
    from facetrec.es import make_client

    return make_client(settings, request_timeout=timeout)


def cmd_index_status(args, settings: Settings) -> int:
    from ingest.indexing.generations import Generations

    status = Generations(_client(settings), settings).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print("\n".join(status_lines(status, settings.item_alias)))
    return 0


def status_lines(status: dict, item_alias: str) -> list[str]:
    """``facetrec index status`` as text: the pairs, then every generation index (aligned columns)."""
    pairs = []
    for p in status["pairs"]:
        model = p["model_version"] if p["model_version"] == p["item_model_version"] else \
            f"{p['model_version']}!={p['item_model_version']}"
        pairs.append(["*" if p["live"] else "+" if p.get("aliased") else "", p["generation"],
                      p["item_index"][len(item_alias) + 1:], model, p["state"], p["user_docs"], p["item_docs"]])
    lines = ["pairs (a user generation and the item generation its vectors were made for; * = live, + = behind an "
             "experiment arm's aliases):"]
    if pairs:
        lines += format_table(["live", "user generation", "item generation", "model", "state", "users", "items"],
                              pairs, right=(5, 6), indent="  ")
    else:
        lines.append("  none: nothing is published yet (`facetrec pipeline run`, or `make demo`)")
    indices = [[family, g["index"], g["docs"], g["state"], "*" if g["live"] else "", g["model_version"]]
               for family in ("item", "user") for g in status[family]]
    if indices:
        lines += [""] + format_table(["family", "index", "docs", "state", "live", "model"], indices, right=(2,))
    return lines


def cmd_index_rollback(args, settings: Settings) -> int:
    import sys

    from ingest.indexing.generations import Generations, NoPairToRollBackTo
    from ingest.indexing.lock import reindex_lock

    es = _client(settings)
    gens = Generations(es, settings)
    try:
        with reindex_lock(es, settings) as lock:
            targets = gens.rollback(fence=lock.fence)
    except NoPairToRollBackTo:
        print(f"facetrec: {nothing_to_roll_back_to(gens.pairs())}", file=sys.stderr)
        return 1
    print(f"facetrec: rolled back to the previous pair: {', '.join(f'{k} -> {v}' for k, v in targets.items())}; "
          "the pair it left is marked rolled_back")
    return 0


def nothing_to_roll_back_to(pairs: list) -> str:
    """Why a rollback has nowhere to go, as a sentence (``pairs``: Generations.pairs(), oldest first)."""
    live = next((p for p in pairs if p.live), None)
    if live is None and not pairs:
        return ("nothing to roll back to: no generation is published yet (`facetrec pipeline run` or `make demo` "
                "publishes one)")
    older = [p for p in pairs if not p.live and (live is None or p.generation < live.generation)]
    skipped = Counter(p.state for p in older if not p.usable)
    why = f"; the older ones are {', '.join(f'{n} {state}' for state, n in sorted(skipped.items()))} " \
          "(a rollback never returns to those)" if skipped else ""
    if live is None:
        return f"nothing to roll back to: no pair is live and none older is validated{why}"
    return (f"nothing to roll back to: the live pair (user generation {live.generation}, model "
            f"{live.model_version}) is the only validated one{why}. A rollback needs an older validated pair; "
            "each publish adds one (`make demo` publishes one, so right after it there is none): publish again "
            "with `facetrec pipeline run`, then a rollback returns to this one")


def cmd_index_unlock(args, settings: Settings) -> int:
    from ingest.indexing.lock import force_unlock, lock_name

    removed = force_unlock(_client(settings), name=lock_name(settings))
    print("facetrec: lock removed" if removed else "facetrec: no lock was held")
    return 0


def cmd_index_publish(args, settings: Settings) -> int:
    from facetrec.catalog.rows import RowCatalog
    from ingest.indexing.records import parquet_count, parquet_records
    from ingest.indexing.reindex import run_reindex

    if args.segments is not None:
        settings = settings.replace(item_segments=args.segments)
    result = run_reindex(
        _client(settings), settings, RowCatalog.from_settings(settings),
        items=parquet_records(args.items) if args.items else None, users=parquet_records(args.users),
        expected_items=parquet_count(args.items) if args.items else None, expected_users=parquet_count(args.users),
        model_version=args.model_version, generation=args.generation)
    print(json.dumps(result, indent=2, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="index generations: status, rollback, unlock, publish",
                           description="The dated item and user generations behind the item_index / user_index "
                                       "aliases, in pairs (a user generation and the item generation its vectors were "
                                       "made for).")
    isub = index.add_subparsers(dest="index_command", required=True)
    p = isub.add_parser("status", help="list pairs (model version, state, counts, which is live) and every generation "
                                       "index",
                        description="List the pairs (user and item generation, model version, state, document counts, "
                                    "which is live) and every generation index of each family.")
    p.add_argument("--json", action="store_true", help="print the same as JSON (pairs, item, user); a pair's "
                   "\"live\" says control's aliases name it, \"aliased\" that some alias does (control's or an "
                   "experiment arm's: retention keeps it, rollback never lands on it)")
    p.set_defaults(func=cmd_index_status)
    isub.add_parser("rollback", help="move both aliases to the previous consistent pair in one call; mark the one left "
                                     "rolled_back",
                    description="Move both aliases to the newest validated pair older than the live one, in one "
                                "_aliases call, and mark the pair it left rolled_back (a second rollback goes further "
                                "back). With only one validated pair (right after `make demo`) there is nothing to roll "
                                "back to: it says so and exits 1.").set_defaults(func=cmd_index_rollback)
    isub.add_parser("unlock", help="remove a re-index lock left by a dead run",
                    description="Remove the re-index lock a run that died left behind (a live run renews its lease; "
                                "an expired lease is taken over anyway).").set_defaults(func=cmd_index_unlock)
    p = isub.add_parser("publish", help="load embedding parquet into a new generation, validate, swap",
                        description="Load embedding parquet files (as `facetrec embed` writes them) into a new "
                                    "generation, validate every configured row against it, and move the aliases in "
                                    "one call.")
    p.add_argument("--items", help="item embeddings parquet (omit for a users-only refresh)")
    p.add_argument("--users", required=True, help="user embeddings parquet")
    p.add_argument("--model-version", required=True, help="the model version the vectors come from (recorded on "
                                                          "the generation; items and users of a pair must agree)")
    p.add_argument("--generation", help="generation id (default: now, UTC)")
    p.add_argument("--segments", type=int, default=None, metavar="N",
                   help="force-merge a graph item index to N segments (default FACETREC_ITEM_SEGMENTS; 0: as loaded)")
    p.set_defaults(func=cmd_index_publish)
