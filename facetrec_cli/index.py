"""`facetrec index status | rollback | unlock | publish`: thin wrappers over ingest.indexing."""

from __future__ import annotations

import argparse
import json

from facetrec.settings import Settings


def _client(settings: Settings, timeout: float = 120):
    from facetrec.es import make_client

    return make_client(settings, request_timeout=timeout)


def cmd_index_status(args, settings: Settings) -> int:
    from ingest.indexing.generations import Generations

    status = Generations(_client(settings), settings).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print("pairs (a user generation and the item generation its vectors were made for; * = live):")
    print(f"  {'live':<4} {'user generation':<26} {'item generation':<26} {'model':<22} {'state':<11} "
          f"{'users':>9} {'items':>10}")
    for p in status["pairs"]:
        item_generation = p["item_index"][len(settings.item_alias) + 1:]
        model = p["model_version"] if p["model_version"] == p["item_model_version"] else \
            f"{p['model_version']}!={p['item_model_version']}"
        print(f"  {'*' if p['live'] else '':<4} {p['generation']:<26} {item_generation:<26} {model or '':<22} "
              f"{p['state']:<11} {p['user_docs']:>9} {p['item_docs']:>10}")
    print(f"\n{'family':<6} {'index':<44} {'docs':>10} {'state':<11} {'live':<5} model")
    for family in ("item", "user"):
        for g in status[family]:
            print(f"{family:<6} {g['index']:<44} {g['docs']:>10} {g['state']:<11} {'*' if g['live'] else '':<5} "
                  f"{g['model_version'] or ''}")
    return 0


def cmd_index_rollback(args, settings: Settings) -> int:
    from ingest.indexing.generations import Generations
    from ingest.indexing.lock import ReindexLock

    es = _client(settings)
    with ReindexLock(es, name=f"reindex-{settings.item_alias}", lease_s=settings.lock_lease_s) as lock:
        targets = Generations(es, settings).rollback(fence=lock.fence)
    print(f"facetrec: rolled back to the previous pair: {', '.join(f'{k} -> {v}' for k, v in targets.items())}; "
          "the pair it left is marked rolled_back")
    return 0


def cmd_index_unlock(args, settings: Settings) -> int:
    from ingest.indexing.lock import force_unlock

    removed = force_unlock(_client(settings), name=f"reindex-{settings.item_alias}")
    print("facetrec: lock removed" if removed else "facetrec: no lock was held")
    return 0


def cmd_index_publish(args, settings: Settings) -> int:
    from facetrec.rows import RowCatalog
    from ingest.indexing.records import parquet_count, parquet_records
    from ingest.indexing.reindex import run_reindex

    result = run_reindex(
        _client(settings), settings, RowCatalog.load(settings.rows_config),
        items=parquet_records(args.items) if args.items else None, users=parquet_records(args.users),
        expected_items=parquet_count(args.items) if args.items else None, expected_users=parquet_count(args.users),
        model_version=args.model_version, generation=args.generation, force_merge=args.force_merge)
    print(json.dumps(result, indent=2, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="index generations: status, rollback, unlock, publish")
    isub = index.add_subparsers(dest="index_command", required=True)
    p = isub.add_parser("status", help="list pairs (model version, state, counts, which is live) and every generation index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index_status)
    isub.add_parser("rollback", help="move both aliases to the previous consistent pair in one call; mark the one left rolled_back").set_defaults(
        func=cmd_index_rollback)
    isub.add_parser("unlock", help="remove a re-index lock left by a dead run").set_defaults(func=cmd_index_unlock)
    p = isub.add_parser("publish", help="load embedding parquet into a new generation, validate, swap")
    p.add_argument("--items", help="item embeddings parquet (omit for a users-only refresh)")
    p.add_argument("--users", required=True, help="user embeddings parquet")
    p.add_argument("--model-version", required=True)
    p.add_argument("--generation", help="generation id (default: now, UTC)")
    p.add_argument("--force-merge", action="store_true", help="merge the item index to one segment (faster HNSW)")
    p.set_defaults(func=cmd_index_publish)
