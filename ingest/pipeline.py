"""The nightly pipeline as importable steps: data -> ETL -> train -> evaluate -> embed -> publish.

Each step reads and writes files under one work directory, so the CLI, the Airflow DAG and the
demo run exactly the same code, and any step can be rerun on its own.

    <work>/inputs.json the catalog schema file and the inputs' URIs (events, catalog, users) the run reads
    <work>/raw/        a bundled data set's input files (ingest.embedding.datasets)
    <work>/etl/        Spark ETL output (with the catalog schema it used, catalog.json)
    <work>/model/      checkpoint.pt, train_summary.json
    <work>/ranker/     ranker.txt, ranker_items.npz, ranker.json (the ranking stage; registered with the encoder)
    <work>/eval.json   evaluation table (model vs MostPop vs Markov)
    <work>/embeddings/ items.parquet, users.parquet, user_encoder.pt (registered under the models
                       root by the publish step: <models_root>/<model_version>/)
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from facetrec.settings import CATALOGS_DIR, Settings

DATASETS = ("movielens-100k", "synthetic")   # the bundled data sets: catalogs/<name>/
DATASET_ROWS = {name: CATALOGS_DIR / name / "rows.yaml" for name in DATASETS}


def paths(work_dir) -> dict[str, Path]:
    work = Path(work_dir)
    return {"inputs": work / "inputs.json", "raw": work / "raw", "etl": work / "etl", "model": work / "model",
            "eval": work / "eval.json", "embeddings": work / "embeddings", "ranker": work / "ranker"}


def step_prepare_data(dataset: str, work_dir, **dataset_kwargs) -> dict:
    """Write a bundled data set's input files under <work>/raw and name them, with its catalog schema,
    as the run's inputs."""
    from ingest.embedding.datasets import BUNDLED, write_dataset

    files = write_dataset(dataset, paths(work_dir)["raw"], **dataset_kwargs)
    return step_inputs(work_dir, BUNDLED[dataset] / "catalog.yaml", files["events"], files["catalog"],
                       files["users"])


def step_inputs(work_dir, catalog_config, events, catalog, users=None) -> dict:
    """Record the run's catalog schema file and input URIs (<work>/inputs.json); the schema is read
    (and refused with the reason) here, before any work."""
    from facetrec.catalog.schema import CatalogSchema

    schema = CatalogSchema.load(catalog_config)
    record = {"catalog_config": str(Path(catalog_config).resolve()), "catalog_name": schema.name,
              "events": str(events), "catalog": str(catalog), "users": str(users) if users else None}
    path = paths(work_dir)["inputs"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return record


def run_inputs(work_dir) -> dict:
    path = paths(work_dir)["inputs"]
    if not path.is_file():
        from facetrec.errors import ConfigurationError

        raise ConfigurationError(f"{path} is missing: run the prepare step (a bundled data set) or name the inputs "
                                 "(`facetrec pipeline run --catalog-config FILE --events URI --catalog URI`)")
    return json.loads(path.read_text())


def step_etl(work_dir, now_ts: int | None = None, tie_break: str = "hash") -> dict:
    from facetrec.catalog.schema import CatalogSchema
    from ingest.embedding.etl import run_etl
    from ingest.embedding.spark import spark_session

    record = run_inputs(work_dir)
    schema = CatalogSchema.load(record["catalog_config"])
    with spark_session("facetrec-etl") as spark:
        return run_etl(spark, schema, record["events"], record["catalog"], paths(work_dir)["etl"],
                       users_path=record["users"], now_ts=now_ts, tie_break=tie_break)


def step_train(work_dir, model_overrides: dict | None = None, train_overrides: dict | None = None,
               progress: bool = True) -> dict:
    import shutil

    from ingest.embedding.model import ModelConfig
    from ingest.embedding.train import TrainConfig, train_from_etl

    p = paths(work_dir)
    shutil.rmtree(p["ranker"], ignore_errors=True)   # a ranker belongs to the towers it was trained for
    summary = train_from_etl(p["etl"], p["model"], ModelConfig(**(model_overrides or {})),
                             TrainConfig(**(train_overrides or {})), progress=progress)
    summary.pop("model")
    return {k: v for k, v in summary.items() if k != "history"}


def _load_model(work_dir):
    from ingest.embedding.features import load_training_data
    from ingest.embedding.train import load_checkpoint

    p = paths(work_dir)
    data = load_training_data(p["etl"])
    model, meta = load_checkpoint(p["model"] / "checkpoint.pt", data)
    return model, meta, data


def step_rank(work_dir, ranker_overrides: dict | None = None, log=print) -> dict:
    """Train the ranking stage for the trained towers (``ingest.embedding.ranker_training``) into
    <work>/ranker/; towers trained on every position (``ranker_holdout`` 0) get none, and any
    ranker left from an earlier model is removed, so a ranker only ever ships with its own towers."""
    import shutil

    from facetrec.model import ranker as ranking
    from ingest.embedding.ranker_training import RankerConfig, train_ranker

    model, meta, data = _load_model(work_dir)
    out = paths(work_dir)["ranker"]
    shutil.rmtree(out, ignore_errors=True)
    holdout = meta["train_config"].get("ranker_holdout", 0)
    if not holdout:
        log("ranker: none (the towers were trained on every position: ranker_holdout 0)")
        return {"ranker": None}
    summary = train_ranker(model, data, paths(work_dir)["etl"], out, holdout, RankerConfig(**(ranker_overrides or {})),
                           meta["model_version"], log=log)
    ranking.save_meta(out, {"checkpoint_sha256": _checkpoint_digest(work_dir)})
    out = {k: v for k, v in summary.items() if k not in ("importance_gain", "config")}
    out["top_features"] = sorted(summary["importance_gain"], key=lambda f: -summary["importance_gain"][f])[:5]
    return out


def _checkpoint_digest(work_dir) -> str:
    import hashlib

    return hashlib.sha256((paths(work_dir)["model"] / "checkpoint.pt").read_bytes()).hexdigest()


def trained_ranker(work_dir, model_version: str) -> Path | None:
    """The work directory's ranker (its folder) if it was trained for these towers: ``model_version``
    and the very checkpoint (else None). Checked from its meta file; nothing is loaded."""
    from facetrec.model import ranker as ranking

    directory = paths(work_dir)["ranker"]
    if not all((directory / name).is_file() for name in ranking.RANKER_FILES):
        return None
    meta = json.loads((directory / ranking.RANKER_META).read_text())
    if meta.get("model_version") != model_version or meta.get("checkpoint_sha256") != _checkpoint_digest(work_dir):
        return None
    return directory


def step_evaluate(work_dir, split: str = "test") -> dict:
    from facetrec.model.ranker import Ranker
    from ingest.embedding.evaluate import comparison_table, evaluate, evaluate_all, write_results
    from ingest.embedding.ranker_training import ranked_scorer

    model, meta, data = _load_model(work_dir)
    results = evaluate_all(model, data, split)
    ranker_dir = trained_ranker(work_dir, meta["model_version"])
    if ranker_dir is not None:
        results["two-tower+ranker"] = evaluate(ranked_scorer(model, data, Ranker.load(ranker_dir)), data, split)
    write_results({"split": split, "model_version": meta["model_version"], "results": results}, paths(work_dir)["eval"])
    print(comparison_table(results))
    return results


def run_rows_config(work_dir, settings: Settings) -> Path:
    """The row config of a run: the ``rows.yaml`` beside the catalog schema file it recorded
    (``inputs.json``), else the configured one."""
    recorded = paths(work_dir)["inputs"]
    if recorded.is_file():
        beside = Path(json.loads(recorded.read_text())["catalog_config"]).parent / "rows.yaml"
        if beside.is_file():
            return beside
    return settings.rows_config


def step_evaluate_served(work_dir, settings: Settings, split: str = "test", users: int = 0,
                         progress: bool = True, rows_config=None) -> dict:
    """Offline vs served HR@10 / NDCG@10 of the same vectors, and every homepage row's hit rate as
    served (see ingest.served_evaluation); written to <work>/eval_served.json."""
    from facetrec.catalog.rows import RowCatalog
    from ingest.embedding.features import etl_schema
    from ingest.served_evaluation import evaluate_served, parity_table

    model, meta, data = _load_model(work_dir)
    ranker_dir = trained_ranker(work_dir, meta["model_version"])
    catalog = RowCatalog.load(rows_config or run_rows_config(work_dir, settings),
                              schema=etl_schema(paths(work_dir)["etl"]))
    result = evaluate_served(model, data, paths(work_dir)["etl"], meta["model_version"], settings, split, users,
                             progress, ranker_dir=ranker_dir, catalog=catalog)
    result["model_version"] = meta["model_version"]
    (Path(work_dir) / "eval_served.json").write_text(json.dumps(result, indent=2))
    print(parity_table(result))
    return result


def step_embed(work_dir, progress: bool = True) -> dict:
    from ingest.embedding.embed import export_embeddings

    model, meta, data = _load_model(work_dir)
    p = paths(work_dir)
    out = export_embeddings(model, data, p["etl"], p["embeddings"], meta["model_version"], progress=progress)
    return {**{k: str(v) for k, v in out.items()}, "model_version": meta["model_version"]}


def step_publish(work_dir, settings: Settings, rows_config=None, generation: str | None = None,
                 users_only: bool = False, metrics=None, progress: bool = True, arm: str | None = None) -> dict:
    """Publish the work directory's embeddings as a new pair (behind an experiment arm's aliases
    with ``arm``), after registering its user encoder and ranker under the models root."""
    from datetime import datetime, timezone

    import numpy as np
    import pyarrow.parquet as pq

    from facetrec.catalog.rows import RowCatalog
    from facetrec.es import make_client
    from facetrec.model import ranker as ranking
    from facetrec.model import user_encoder
    from ingest.embedding.features import etl_schema
    from ingest.indexing.records import parquet_count, parquet_records
    from ingest.indexing.reindex import run_reindex

    p = paths(work_dir)
    items_path, users_path = p["embeddings"] / "items.parquet", p["embeddings"] / "users.parquet"
    model_version = pq.read_table(items_path, columns=["model_version"]).column(0)[0].as_py()
    if all((p["embeddings"] / name).is_file() for name in user_encoder.ENCODER_FILES):
        # Before anything goes live: the events API recomputes this pair's user vectors with it,
        # and the rows are ranked by its ranker (or keep retrieval order: none left from before).
        directory = user_encoder.register(p["embeddings"], settings.models_root, model_version)
        if trained_ranker(work_dir, model_version) is not None:
            ranking.register(p["ranker"], directory)
        else:
            ranking.unregister(directory)
    report = json.loads((p["etl"] / "report.json").read_text()) if (p["etl"] / "report.json").is_file() else {}
    events_until = report.get("events_until")
    catalog_read_at = report.get("catalog_read_at")
    recall_sample = None
    if not users_only and settings.graph_index:
        items = pq.read_table(items_path, columns=["item_id", "item_embed"]).to_pydict()
        users = pq.read_table(users_path, columns=["user_embed"]).slice(0, 50).to_pydict()
        recall_sample = (np.array(users["user_embed"], dtype=np.float32), items["item_id"],
                         np.array(items["item_embed"], dtype=np.float32))
    # The rows are checked against, and the pair records, the catalog schema the data was made with.
    catalog = RowCatalog.load(rows_config or settings.rows_config, schema=etl_schema(p["etl"]))
    with _spark_for_loading() as spark:
        # On a Spark cluster the executors load the pair, partition by partition (fenced by the
        # driver's lock before and after); otherwise the driver streams the parquet itself.
        read = (lambda path: spark.read.parquet(str(path))) if spark is not None else parquet_records
        return run_reindex(make_client(settings, request_timeout=300), settings, catalog,
                           items=None if users_only else read(items_path), users=read(users_path),
                           expected_items=None if users_only else parquet_count(items_path),
                           expected_users=parquet_count(users_path), model_version=model_version,
                           generation=generation, recall_sample=recall_sample, metrics=metrics, progress=progress,
                           events_since=datetime.fromtimestamp(events_until, timezone.utc) if events_until else None,
                           items_since=datetime.fromisoformat(catalog_read_at) if catalog_read_at else None,
                           arm=arm)


@contextlib.contextmanager
def _spark_for_loading():
    """A SparkSession when SPARK_MASTER names a cluster (the active one if a caller owns it), else None."""
    from ingest.embedding.spark import on_cluster, spark_session

    if not on_cluster():
        yield None
        return
    with spark_session("facetrec-publish") as spark:
        yield spark


def run_pipeline(dataset: str | None, work_dir, settings: Settings, *, rows_config=None, generation: str | None = None,
                 train: bool = True, model_overrides: dict | None = None, train_overrides: dict | None = None,
                 ranker_overrides: dict | None = None, dataset_kwargs: dict | None = None,
                 catalog_config=None, events=None, catalog=None, users=None,
                 metrics=None, progress: bool = True, log=print) -> dict:
    """The whole nightly job without Airflow: on a bundled ``dataset``, or on a catalog of your own
    (``catalog_config``, the schema file, with the ``events``, ``catalog`` and optional ``users``
    inputs). The rows: ``rows_config``, else the ``rows.yaml`` beside the schema file."""
    from facetrec.metrics import NoMetrics

    metrics = metrics or NoMetrics()
    if (dataset is None) == (catalog_config is None):
        raise ValueError("give a bundled data set, or a catalog schema file with its inputs (not both)")
    summary: dict = {"dataset": dataset, "catalog_config": str(catalog_config) if catalog_config else None,
                     "work_dir": str(work_dir)}
    if dataset is not None:
        rows_config = rows_config or DATASET_ROWS[dataset]
        prepare = lambda: step_prepare_data(dataset, work_dir, **(dataset_kwargs or {}))  # noqa: E731
    else:
        beside = Path(catalog_config).parent / "rows.yaml"
        rows_config = rows_config or (beside if beside.is_file() else settings.rows_config)
        prepare = lambda: step_inputs(work_dir, catalog_config, events, catalog, users)  # noqa: E731
    steps = [("prepare", prepare), ("etl", lambda: step_etl(work_dir))]
    if train or not (paths(work_dir)["model"] / "checkpoint.pt").exists():
        steps.append(("train", lambda: step_train(work_dir, model_overrides, train_overrides, progress)))
        steps.append(("rank", lambda: step_rank(work_dir, ranker_overrides, log=log)))
    steps += [("evaluate", lambda: step_evaluate(work_dir)),
              ("embed", lambda: step_embed(work_dir, progress)),
              ("publish", lambda: step_publish(work_dir, settings, rows_config, generation, metrics=metrics,
                                               progress=progress))]
    for name, step in steps:
        log(f"==> pipeline step: {name}")
        started = time.perf_counter()
        summary[name] = step()
        metrics.timing("pipeline.step", (time.perf_counter() - started) * 1000, tags=[f"step:{name}"])
        log(f"    {name} done in {time.perf_counter() - started:.1f}s")
    (Path(work_dir) / "pipeline_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
