"""`facetrec experiment start|status|weight|promote|stop|report`: experiment arms over generation pairs
(thin wrappers over ingest/experiments/lifecycle.py and ingest/experiments/report.py)."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

from facetrec.settings import Settings
from facetrec_cli.table import format_table


def _client(settings: Settings):
    from facetrec.es import make_client

    return make_client(settings, request_timeout=300)


def cmd_start(args, settings: Settings) -> int:
    from ingest.experiments import lifecycle as experiments
    from ingest.pipeline import step_publish

    result = experiments.start(
        _client(settings), settings, experiment_id=args.experiment, arm=args.arm, weight=args.weight,
        publish=lambda arm: step_publish(args.work_dir, settings, rows_config=args.rows, generation=args.generation,
                                         arm=arm))
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_status(args, settings: Settings) -> int:
    from ingest.experiments import lifecycle as experiments

    status = experiments.status(_client(settings), settings)
    print(json.dumps(status, indent=2) if args.json else "\n".join(status_lines(status)))
    return 0


def status_lines(status: dict) -> list[str]:
    """``facetrec experiment status`` as text: the experiment, then one line per arm."""
    head = (f"experiment {status['experiment']} (started {status.get('started_at')})" if status["experiment"]
            else "no experiment is running: every user is served by control")
    rows = [[a["name"], f"{a['weight']:.3f}", a.get("model_version"), a.get("generation"), a.get("item_index"),
             a.get("user_index")] for a in status["arms"]]
    return [head, *format_table(["arm", "weight", "model", "generation", "item index", "user index"], rows,
                                right=(1,), indent="  ")]


def cmd_weight(args, settings: Settings) -> int:
    from ingest.experiments import lifecycle as experiments

    print(json.dumps(experiments.set_weight(_client(settings), settings, args.arm, args.weight), indent=2))
    return 0


def cmd_promote(args, settings: Settings) -> int:
    from ingest.experiments import lifecycle as experiments

    print(json.dumps(experiments.promote(_client(settings), settings, args.arm), indent=2))
    return 0


def cmd_stop(args, settings: Settings) -> int:
    from ingest.experiments import lifecycle as experiments

    print(json.dumps(experiments.stop(_client(settings), settings, args.arm), indent=2))
    return 0


def cmd_report(args, settings: Settings) -> int:
    from facetrec.events.log import event_log_index
    from ingest.experiments.report import impression_lines, report, table

    result = report(_client(settings), event_log_index(settings), impression_lines(args.log),
                    timedelta(hours=args.window_h), experiment=args.experiment)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="experiment arms: candidate pairs served to a share of users",
                       description="Serve a candidate model's generation pair to a share of users beside the control "
                                   "pair, measure it, then promote it (one alias swap) or stop it.")
    esub = p.add_subparsers(dest="experiment_command", required=True)
    start = esub.add_parser("start", help="publish a work directory's embeddings as an arm of an experiment",
                            description="Publish --work-dir's embeddings (as `facetrec embed` writes them) behind the "
                                        "arm's aliases, validated like the nightly publish, and serve them to --weight "
                                        "of users; the control aliases are not touched.")
    start.add_argument("--experiment", required=True, help="experiment id (a new one, or the running one's)")
    start.add_argument("--arm", required=True, help="the candidate arm's name (a-z, 0-9, _ and -)")
    start.add_argument("--weight", type=float, required=True, help="its share of users, 0..1 (control gets the rest)")
    start.add_argument("--work-dir", default="artifacts/run", help="the candidate's pipeline work directory "
                                                                   "(default: %(default)s)")
    start.add_argument("--rows", type=Path, help="row config its validation asks (default: FACETREC_ROWS_CONFIG)")
    start.add_argument("--generation", help="generation id (default: now, UTC)")
    start.set_defaults(func=cmd_start)
    p = esub.add_parser("status", help="the running experiment's arms, weights and pairs",
                    description="Print the running experiment: each arm's weight, model version and the "
                                "indices behind its aliases.")
    p.add_argument("--json", action="store_true", help="print the same as JSON (for machines)")
    p.set_defaults(func=cmd_status)
    weight = esub.add_parser("weight", help="give an arm another share of users (only its users and control's move)",
                             description="Change a candidate arm's weight: it takes hash buckets from control or "
                                         "gives its own back; no other arm's user changes arm.")
    weight.add_argument("--arm", required=True, help="the candidate arm")
    weight.add_argument("--weight", type=float, required=True, help="its new share of users, 0..1")
    weight.set_defaults(func=cmd_weight)
    promote = esub.add_parser("promote", help="make an arm's pair the control pair (one _aliases call)",
                              description="Point the item and user aliases at the arm's pair in one _aliases call; "
                                          "the arm leaves the experiment and its own aliases are removed.")
    promote.add_argument("--arm", required=True, help="the arm to promote")
    promote.set_defaults(func=cmd_promote)
    stop = esub.add_parser("stop", help="retire an arm (or every arm); its pair is left to retention",
                           description="Take the arm (default: every candidate arm) out of the experiment and "
                                       "remove its aliases; its pair is kept under the normal retention.")
    stop.add_argument("--arm", help="the arm to retire (default: every candidate arm)")
    stop.set_defaults(func=cmd_stop)
    report = esub.add_parser("report", help="hit rate per arm with 95%% intervals, from impressions and events",
                             description="Read the service's impression lines (its JSON log) and the event log: per "
                                         "arm, the share of pages followed by an event on one of their items.")
    report.add_argument("--log", type=Path, nargs="+", required=True, help="the service's JSON log file(s)")
    report.add_argument("--experiment", help="which experiment (default: the only one in the log)")
    report.add_argument("--window-h", type=float, default=24.0, help="hours after a page an event counts "
                                                                     "(default: %(default)s)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(func=cmd_report)
