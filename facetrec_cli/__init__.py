"""`facetrec`: the one command-line tree, above the packages it orchestrates.

    facetrec index status | rollback | unlock | publish --items P --users P     (facetrec_cli/index.py)
    facetrec etl | train | evaluate | embed                                   (facetrec_cli/pipeline.py)
    facetrec pipeline run --dataset movielens-100k|synthetic                  (facetrec_cli/pipeline.py)
    facetrec pipeline run --catalog-config FILE --events URI --catalog URI   (your catalog: docs/your-data.md)
    facetrec demo [stop] [--catalog movielens|synthetic]                      (facetrec_cli/demo.py)
    facetrec events replay --since T                                          (facetrec_cli/events.py)
    facetrec spark start | status | stop                                      (facetrec_cli/spark.py)
    facetrec experiment start | status | weight | promote | stop | report     (facetrec_cli/experiment.py)
    facetrec kibana [--catalog-config FILE] [--out FILE]                     (facetrec_cli/kibana.py)

Each command is a thin wrapper over an importable function (the Airflow DAGs call the same ones).
The local node has its own small program, `facetrec-es start|stop|status|build-classpath`
(facetrec_cli/es.py over facetrec/local/node.py).
"""

from __future__ import annotations

import argparse
import sys

from facetrec.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    from facetrec_cli import demo, events, experiment, index, items, kibana, pipeline, spark

    parser = argparse.ArgumentParser(prog="facetrec", description="The facetrec command line: index generations, "
                                     "the nightly pipeline and its steps, the demo, and the events log. "
                                     "`facetrec <command> --help` describes each.")
    sub = parser.add_subparsers(dest="command", required=True)
    index.register(sub)
    pipeline.register(sub)
    demo.register(sub)
    events.register(sub)
    spark.register(sub)
    experiment.register(sub)
    kibana.register(sub)
    items.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.func(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI's last line: one clear message, the traceback with FACETREC_DEBUG=1
        from facetrec_cli.errors import explain

        print(f"facetrec: error: {explain(exc)}", file=sys.stderr)
        return 1
