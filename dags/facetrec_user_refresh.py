"""facetrec daily user refresh: fresh user histories through the live model's exported user
encoder, then a users-only generation and a swap of `user_index` alone (items untouched).
Thin: every task calls ingest.dag_tasks."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

try:
    from airflow.sdk import dag, get_current_context, task
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task
    from airflow.operators.python import get_current_context


@dag(dag_id="facetrec_user_refresh", schedule="0 14 * * *", start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
     catchup=False, max_active_runs=1, tags=["facetrec"],
     default_args={"owner": "recommendations", "retries": 2, "retry_delay": timedelta(minutes=5)})
def facetrec_user_refresh():
    @task
    def refresh() -> dict:
        from ingest import dag_tasks

        ctx = get_current_context()
        end = ctx.get("data_interval_end") or ctx["logical_date"]
        work_root = os.environ.get("FACETREC_WORK_ROOT", "/var/lib/facetrec/runs")
        models_root = dag_tasks.models_root()
        work_dir = dag_tasks.work_dir_for(work_root, end) + "-users"
        dag_tasks.prepare(os.environ.get("FACETREC_DATASET", "movielens-100k"), work_dir)
        dag_tasks.etl(work_dir)
        dag_tasks.refresh_user_vectors(work_dir, models_root)
        return dag_tasks.publish(work_dir, os.environ.get("FACETREC_ROWS_CONFIG") or None, end, users_only=True)

    refresh()


facetrec_user_refresh()
