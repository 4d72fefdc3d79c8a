"""What the Airflow tasks do, as plain functions keyed on the run's data interval.

Each function is idempotent for a given interval: it writes under that interval's work
directory, and the publish step addresses the generation named after the interval, so a retried
or re-run task redoes its own work and never publishes twice (a live generation is a no-op).

Load, validation, swap and retention run inside ONE task (``publish``): they share the re-index
lock, and a failure anywhere before the swap deletes the partial generation and leaves the
aliases untouched. Splitting them into separate Airflow tasks would let a retried swap run
without the lock and leave half-built generations between tasks.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from facetrec.metrics import make_metrics
from facetrec.settings import Settings
from ingest import pipeline


def generation_for(interval_end: datetime) -> str:
    return interval_end.strftime("%Y%m%d-%H%M%S")


def work_dir_for(work_root: str, interval_end: datetime) -> str:
    return str(Path(work_root) / generation_for(interval_end))


def prepare(dataset: str, work_dir: str, dataset_kwargs: dict | None = None) -> dict:
    return pipeline.step_prepare_data(dataset, work_dir, **(dataset_kwargs or {}))


def inputs(work_dir: str, catalog_config: str, events: str | None, catalog: str | None, users: str | None) -> dict:
    """Your catalog's run: its schema file and input URIs (FACETREC_CATALOG_CONFIG, FACETREC_EVENTS_URI, ...)."""
    if not events or not catalog:
        from facetrec.errors import ConfigurationError

        raise ConfigurationError("FACETREC_CATALOG_CONFIG needs FACETREC_EVENTS_URI and FACETREC_CATALOG_URI (the "
                                 "events and the catalog: a file, a directory of part files or a glob)")
    return pipeline.step_inputs(work_dir, catalog_config, events, catalog, users)


def etl(work_dir: str) -> dict:
    return pipeline.step_etl(work_dir)


def models_root() -> str:
    """Where the DAGs keep the latest model: FACETREC_MODELS_ROOT with the service's default, the
    root the publish step registers each model version's encoder under."""
    from facetrec.settings import Settings

    return str(Settings.from_env().models_root)


def train_or_reuse(work_dir: str, models_root: str, due: bool, model_overrides: dict | None = None,
                   train_overrides: dict | None = None) -> dict:
    """Train the towers and their ranker when the weekly retrain is due (or no usable model exists);
    otherwise reuse the latest model and its ranker when they were trained on the same data version."""
    import json

    latest = Path(models_root) / "latest"
    latest_ranker = Path(models_root) / "latest-ranker"
    target = pipeline.paths(work_dir)["model"]
    ranker = pipeline.paths(work_dir)["ranker"]
    data_version = json.loads((pipeline.paths(work_dir)["etl"] / "report.json").read_text())["data_version"]
    if not due and (latest / "train_summary.json").exists():
        meta = json.loads((latest / "train_summary.json").read_text())
        if meta["data_version"] == data_version:
            shutil.copytree(latest, target, dirs_exist_ok=True)
            shutil.rmtree(ranker, ignore_errors=True)
            if latest_ranker.is_dir():
                shutil.copytree(latest_ranker, ranker)
            return {"trained": False, "model_version": meta["model_version"]}
    summary = pipeline.step_train(work_dir, model_overrides, train_overrides, progress=False)
    pipeline.step_rank(work_dir, log=lambda *_: None)
    shutil.copytree(target, latest, dirs_exist_ok=True)
    shutil.rmtree(latest_ranker, ignore_errors=True)
    if ranker.is_dir():
        shutil.copytree(ranker, latest_ranker)
    return {"trained": True, "best_epoch": summary["best_epoch"], "valid_HR@10": summary["valid_HR@10"]}


def evaluate(work_dir: str) -> dict:
    return pipeline.step_evaluate(work_dir)


def embed(work_dir: str) -> dict:
    return pipeline.step_embed(work_dir, progress=False)


def publish(work_dir: str, rows_config: str | None, interval_end: datetime, users_only: bool = False) -> dict:
    settings = Settings.from_env()
    return pipeline.step_publish(work_dir, settings, rows_config, generation_for(interval_end),
                                 users_only=users_only, metrics=make_metrics(settings, "pipeline"), progress=False)


def refresh_user_vectors(work_dir: str, models_root: str) -> dict:
    """Daily user refresh: fresh histories and user features (from this interval's ETL) through the
    EXPORTED user encoder of the live model, so a user's vector equals what the nightly job computes
    for the same history and features; items are not touched."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ingest.embedding.embed import ExportedUserEncoder, write_user_embeddings

    model_dir = Path(models_root) / "latest-embeddings"
    encoder = ExportedUserEncoder(model_dir)
    users = pd.read_parquet(pipeline.paths(work_dir)["etl"] / "users.parquet")
    histories = [[str(i) for i in h] for h in users["history"]]
    vectors = encoder.user_vectors(histories, encoder.feature_indices(users.to_dict("records")))
    out = pipeline.paths(work_dir)["embeddings"]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "items.parquet", out / "items.parquet")  # for the model version only
    model_version = pq.read_table(out / "items.parquet", columns=["model_version"]).column(0)[0].as_py()
    write_user_embeddings(out / "users.parquet", users["user_id"].astype(str).tolist(), vectors, histories,
                          model_version)
    return {"users": len(users)}


def remember_embeddings(work_dir: str, models_root: str) -> None:
    """Keep the published model's exported encoder and items where the user refresh finds them."""
    src = pipeline.paths(work_dir)["embeddings"]
    dst = Path(models_root) / "latest-embeddings"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("user_encoder.pt", "user_encoder.json", "items.parquet"):
        shutil.copy(src / name, dst / name)
