"""`facetrec etl | train | rank | evaluate | embed | pipeline run`: thin wrappers over ingest.pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facetrec.settings import Settings


def _overrides(pairs: list[str]) -> dict:
    """--set key=value pairs (numbers parsed) for ModelConfig / TrainConfig fields."""
    out = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if value.strip().lower() in ("true", "false"):   # True/False as well as JSON's true/false
            out[key] = value.strip().lower() == "true"
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _split(overrides: dict) -> tuple[dict, dict]:
    import dataclasses

    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig

    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise SystemExit(f"facetrec: error: unknown --set key(s) {sorted(unknown)}; "
                         f"model: {sorted(model_keys)}; training: {sorted(train_keys)}")
    return ({k: v for k, v in overrides.items() if k in model_keys},
            {k: v for k, v in overrides.items() if k in train_keys})


def cmd_etl(args, settings: Settings) -> int:
    from ingest import pipeline

    if args.dataset:
        pipeline.step_prepare_data(args.dataset, args.work_dir)
    elif args.catalog_config:
        _require_inputs(args)
        pipeline.step_inputs(args.work_dir, args.catalog_config, args.events, args.catalog, args.users)
    print(json.dumps(pipeline.step_etl(args.work_dir), indent=2))
    return 0


def _require_inputs(args) -> None:
    missing = [flag for flag, value in (("--events", args.events), ("--catalog", args.catalog)) if not value]
    if missing:
        raise SystemExit(f"facetrec: error: --catalog-config needs {' and '.join(missing)} (the input files: a file, "
                         "a directory of part files or a glob; Parquet, CSV or JSON lines)")


def cmd_train(args, settings: Settings) -> int:
    from ingest import pipeline

    model_o, train_o = _split(_overrides(args.set))
    print(json.dumps(pipeline.step_train(args.work_dir, model_o, train_o), indent=2, default=str))
    return 0


def cmd_rank(args, settings: Settings) -> int:
    import dataclasses

    from ingest import pipeline
    from ingest.embedding.ranker_training import RankerConfig

    overrides = _overrides(args.set)
    known = {f.name for f in dataclasses.fields(RankerConfig)}
    if set(overrides) - known:
        raise SystemExit(f"facetrec: error: unknown --set key(s) {sorted(set(overrides) - known)}; "
                         f"ranker: {sorted(known)}")
    print(json.dumps(pipeline.step_rank(args.work_dir, overrides), indent=2, default=str))
    return 0


def cmd_evaluate(args, settings: Settings) -> int:
    from ingest import pipeline

    if args.served:
        pipeline.step_evaluate_served(args.work_dir, settings, args.split, args.users, rows_config=args.rows)
    else:
        pipeline.step_evaluate(args.work_dir, args.split)
    return 0


def cmd_embed(args, settings: Settings) -> int:
    from ingest import pipeline

    print(json.dumps(pipeline.step_embed(args.work_dir), indent=2))
    return 0


def cmd_pipeline_run(args, settings: Settings) -> int:
    from facetrec.metrics import make_metrics
    from ingest import pipeline

    model_o, train_o = _split(_overrides(args.set))
    if args.catalog_config:
        _require_inputs(args)
    dataset = None if args.catalog_config else (args.dataset or "movielens-100k")
    summary = pipeline.run_pipeline(dataset, args.work_dir, settings, rows_config=args.rows,
                                    generation=args.generation, train=not args.skip_train, model_overrides=model_o,
                                    train_overrides=train_o, metrics=make_metrics(settings, "pipeline"),
                                    catalog_config=args.catalog_config, events=args.events, catalog=args.catalog,
                                    users=args.users)
    print(json.dumps(summary["publish"], indent=2, default=str))
    return 0


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog-config", type=Path, metavar="FILE",
                   help="your catalog's schema file (catalog.yaml: columns, facets and their types, user filters, "
                        "event columns; docs/your-data.md)")
    p.add_argument("--events", metavar="URI", help="with --catalog-config: the events (a file, a directory of part "
                                                  "files or a glob; Parquet, CSV or JSON lines; any URI Spark reads)")
    p.add_argument("--catalog", metavar="URI", help="with --catalog-config: the item catalog")
    p.add_argument("--users", metavar="URI", help="with --catalog-config: optional user features")


def register(sub: argparse._SubParsersAction) -> None:
    def work(p):
        p.add_argument("--work-dir", default="artifacts/run", help="where the steps read and write (default: %(default)s)")
        return p

    def step(name, help_text, description):
        return work(sub.add_parser(name, help=help_text, description=description))

    p = step("etl", "Spark ETL of events + catalog into sequences, splits, vocabularies",
             "Spark ETL of the run's inputs (<work>/inputs.json: a bundled data set's, or your catalog's) into "
             "per-user sequences, leave-last-out splits, vocabularies and item features under <work>/etl; bad rows "
             "are counted per reason and sampled under <work>/etl/rejected.")
    p.add_argument("--dataset", choices=["movielens-100k", "synthetic"],
                   help="first write this bundled data set as the input")
    _input_arguments(p)
    p.set_defaults(func=cmd_etl)
    p = step("train", "train the two-tower model (early stopping, checkpoint)",
             "Train the two-tower model on <work>/etl with early stopping on the validation split; the checkpoint "
             "goes to <work>/model.")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model/training setting (repeatable; an unknown key lists the known ones)")
    p.set_defaults(func=cmd_train)
    p = step("rank", "train the ranking stage (LightGBM LambdaRank) for the trained towers",
             "Train the ranker that re-sorts ranked rows' candidates, on the training positions the towers left out "
             "(ranker_holdout); its files go to <work>/ranker and are registered with the model by the publish.")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a ranker setting (repeatable; an unknown key lists the known ones)")
    p.set_defaults(func=cmd_rank)
    p = step("evaluate", "full-ranking evaluation vs MostPop and Markov baselines",
             "Full-ranking HR@10 / NDCG@10 of the checkpoint beside the MostPop and Markov baselines "
             "(leave-last-out, seen items excluded); the table goes to <work>/eval.json.")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="which split (default: %(default)s)")
    p.add_argument("--served", action="store_true",
                   help="also publish the evaluation vectors to the eval_* aliases and measure the rows the service "
                        "returns (HR@10 / NDCG@10 beside the offline full ranking)")
    p.add_argument("--users", type=int, default=0, help="with --served: a fixed random sample of users (0: all)")
    p.add_argument("--rows", help="with --served: the row config whose homepage rows are measured (default: the "
                                  "rows.yaml beside the run's catalog schema)")
    p.set_defaults(func=cmd_evaluate)
    step("embed", "export item/user embeddings and the user encoder",
         "Export item and user embeddings (parquet) and the user encoder (what the events API recomputes vectors "
         "with) to <work>/embeddings.").set_defaults(func=cmd_embed)

    pipe = sub.add_parser("pipeline", help="the nightly pipeline end to end",
                          description="The nightly pipeline, the steps above in order, then a new generation.")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True)
    p = work(psub.add_parser("run", help="data -> ETL -> train -> rank -> evaluate -> embed -> publish (one alias swap)",
                             description="Data -> ETL -> train -> rank -> evaluate -> embed -> publish: a new pair of "
                                         "generations, validated, then one alias swap."))
    p.add_argument("--dataset", choices=["movielens-100k", "synthetic"],
                   help="a bundled data set (default: movielens-100k, unless --catalog-config names your catalog)")
    _input_arguments(p)
    p.add_argument("--rows", help="row config (default: the rows.yaml beside the catalog schema: "
                                  "catalogs/<name>/rows.yaml)")
    p.add_argument("--generation", help="generation id (default: now, UTC)")
    p.add_argument("--skip-train", action="store_true", help="reuse the existing checkpoint")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model/training setting (repeatable)")
    p.set_defaults(func=cmd_pipeline_run)
