"""`facetrec spark start|status|stop`: a Spark standalone cluster on loopback (ingest/embedding/spark_cluster.py)."""

from __future__ import annotations

import argparse
import json

from facetrec.settings import Settings


def cmd_start(args, settings: Settings) -> int:
    from ingest.embedding import spark_cluster

    cluster = spark_cluster.start(workers=args.workers, cores=args.cores, memory=args.memory, timeout=args.timeout)
    print(f"SPARK_MASTER={cluster.master_url}")
    return 0


def cmd_status(args, settings: Settings) -> int:
    from ingest.embedding import spark_cluster

    info = spark_cluster.status()
    print(json.dumps(info, indent=2))
    return 0 if info["running"] else 1


def cmd_stop(args, settings: Settings) -> int:
    from ingest.embedding import spark_cluster

    print(f"facetrec spark: stopped {spark_cluster.stop()} process(es)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spark", help="a Spark standalone cluster on loopback (master + workers) for the pipeline",
                       description="Start, inspect or stop a Spark standalone master and workers on 127.0.0.1, "
                                   "from the installed pyspark's own launcher. Run the pipeline on it with "
                                   "SPARK_MASTER set to the URL `start` prints.")
    ssub = p.add_subparsers(dest="spark_command", required=True)
    start = ssub.add_parser("start", help="start a master and workers; prints SPARK_MASTER=spark://...",
                            description="Start a Spark standalone master and workers on 127.0.0.1 (each its own JVM) "
                                        "and wait until every worker is alive; prints the SPARK_MASTER to use.")
    start.add_argument("--workers", type=int, default=2, help="worker JVMs (default: %(default)s)")
    start.add_argument("--cores", type=int, default=1, help="cores each worker offers (default: %(default)s)")
    start.add_argument("--memory", default="1g", help="memory each worker offers (default: %(default)s)")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers (default: %(default)s)")
    start.set_defaults(func=cmd_start)
    ssub.add_parser("status", help="the master's URL and its alive workers",
                    description="Print the recorded master's URL and how many workers it sees alive; "
                                "exits 1 when no master runs.").set_defaults(func=cmd_status)
    ssub.add_parser("stop", help="stop the recorded master and workers",
                    description="Stop the recorded workers and master (idempotent).").set_defaults(func=cmd_stop)
