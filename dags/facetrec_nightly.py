"""facetrec nightly re-index: ETL -> (weekly) train -> evaluate -> embed -> publish (load, validate,
one atomic alias swap, retention). Thin: every task calls a function in ingest.dag_tasks; nothing
heavy happens at import time.

Configuration (Airflow Variables are not needed): your catalog (FACETREC_CATALOG_CONFIG, its schema
file, with FACETREC_EVENTS_URI, FACETREC_CATALOG_URI and optionally FACETREC_USERS_URI), or else a
bundled data set (FACETREC_DATASET: movielens-100k | synthetic); FACETREC_WORK_ROOT,
FACETREC_MODELS_ROOT, FACETREC_TRAIN_WEEKDAY (0 = Monday), plus the usual facetrec settings (ES_URL,
...). The same steps run without Airflow: `facetrec pipeline run`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

try:
    from airflow.sdk import dag, get_current_context, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task
    from airflow.operators.python import get_current_context

DEFAULT_ARGS = {"owner": "recommendations", "retries": 2, "retry_delay": timedelta(minutes=5)}


def _conf() -> dict:
    from ingest import dag_tasks

    return {
        "dataset": os.environ.get("FACETREC_DATASET", "movielens-100k"),
        "work_root": os.environ.get("FACETREC_WORK_ROOT", "/var/lib/facetrec/runs"),
        "models_root": dag_tasks.models_root(),
        "train_weekday": int(os.environ.get("FACETREC_TRAIN_WEEKDAY", "6")),
        "rows": os.environ.get("FACETREC_ROWS_CONFIG") or None,
        "catalog_config": os.environ.get("FACETREC_CATALOG_CONFIG") or None,
        "inputs": {"events": os.environ.get("FACETREC_EVENTS_URI"), "catalog": os.environ.get("FACETREC_CATALOG_URI"),
                   "users": os.environ.get("FACETREC_USERS_URI") or None},
    }


def _interval_end() -> datetime:
    ctx = get_current_context()
    return ctx.get("data_interval_end") or ctx["logical_date"]


@dag(dag_id="facetrec_nightly", schedule="0 2 * * *", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS, tags=["facetrec"],
     doc_md=__doc__)
def facetrec_nightly():
    @task
    def prepare() -> str:
        from ingest import dag_tasks

        conf = _conf()
        work_dir = dag_tasks.work_dir_for(conf["work_root"], _interval_end())
        if conf["catalog_config"]:
            dag_tasks.inputs(work_dir, conf["catalog_config"], **conf["inputs"])
            return work_dir
        dataset_kwargs = {"n_items": int(os.environ.get("FACETREC_SYNTHETIC_ITEMS", "2000")),
                          "n_users": int(os.environ.get("FACETREC_SYNTHETIC_USERS", "1000"))} \
            if conf["dataset"] == "synthetic" else {}
        dag_tasks.prepare(conf["dataset"], work_dir, dataset_kwargs)
        return work_dir

    @task
    def etl(work_dir: str) -> str:
        from ingest import dag_tasks

        dag_tasks.etl(work_dir)
        return work_dir

    @task
    def train(work_dir: str) -> str:
        from ingest import dag_tasks

        conf = _conf()
        due = _interval_end().weekday() == conf["train_weekday"]
        overrides = {"epochs": int(os.environ["FACETREC_TRAIN_EPOCHS"])} if os.environ.get("FACETREC_TRAIN_EPOCHS") else None
        dag_tasks.train_or_reuse(work_dir, conf["models_root"], due, train_overrides=overrides)
        return work_dir

    @task
    def evaluate(work_dir: str) -> str:
        from ingest import dag_tasks

        dag_tasks.evaluate(work_dir)
        return work_dir

    @task
    def embed(work_dir: str) -> str:
        from ingest import dag_tasks

        dag_tasks.embed(work_dir)
        return work_dir

    @task
    def publish(work_dir: str) -> dict:
        from ingest import dag_tasks

        result = dag_tasks.publish(work_dir, _conf()["rows"], _interval_end())
        dag_tasks.remember_embeddings(work_dir, _conf()["models_root"])
        return result

    publish(embed(evaluate(train(etl(prepare())))))


facetrec_nightly()
