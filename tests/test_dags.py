"""The Airflow DAGs, loaded and run by Airflow itself (dag.test()) on its SQLite default, against
the real Elasticsearch node."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = tempfile.mkdtemp(prefix="facetrec-airflow-")
os.environ.setdefault("AIRFLOW_HOME", AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"

airflow = pytest.importorskip("airflow", reason="install the airflow extra: pip install -e '.[airflow]'")


@pytest.fixture(scope="module")
def airflow_db():
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.models import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dagbag_loads_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    nightly = dagbag.get_dag("facetrec_nightly")
    assert nightly is not None and dagbag.get_dag("facetrec_user_refresh") is not None
    assert nightly.catchup is False and nightly.max_active_runs == 1
    assert all(t.retries >= 2 for t in nightly.tasks)
    assert [t.task_id for t in nightly.topological_sort()] == ["prepare", "etl", "train", "evaluate", "embed",
                                                               "publish"]


@pytest.fixture
def pipeline_env(es_settings, unique, tmp_path, monkeypatch, spark):
    env = {"ES_URL": es_settings.es_url, "FACETREC_ITEM_ALIAS": f"{unique}-item_index",
           "FACETREC_USER_ALIAS": f"{unique}-user_index", "FACETREC_DATASET": "synthetic",
           "FACETREC_SYNTHETIC_ITEMS": "300", "FACETREC_SYNTHETIC_USERS": "200", "FACETREC_TRAIN_EPOCHS": "2",
           "FACETREC_WORK_ROOT": str(tmp_path / "runs"), "FACETREC_MODELS_ROOT": str(tmp_path / "models"),
           "FACETREC_INDEX_TYPE": "flat"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _state(run) -> str:
    return str(getattr(run.state, "value", run.state))


@pytest.mark.slow
def test_nightly_dag_end_to_end_rerun_and_failure(dagbag, pipeline_env, es, tmp_path, monkeypatch):
    """Run 1 publishes; run 2 (next interval) leaves exactly one new live generation; run 3 with a
    task made to fail (validation of an impossible row) leaves the aliases untouched."""
    from app import create_app
    from facetrec.catalog.rows import RowCatalog
    from facetrec.settings import Settings
    from ingest.indexing.generations import Generations

    dag = dagbag.get_dag("facetrec_nightly")
    first = dag.test(logical_date=datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc))
    assert _state(first) == "success"
    gens = Generations(es, Settings.from_env())
    live_item = gens.live_index("item")
    assert live_item is not None
    assert live_item.split("-item_index-")[1] == gens.live_index("user").split("-user_index-")[1]

    # Homepage traffic through the service during the DAG-driven swap: no request may fail.
    app = create_app(Settings.from_env().replace(es_request_timeout_s=5.0),
                     RowCatalog.load(REPO / "catalogs" / "synthetic" / "rows.yaml"))
    client = app.test_client()
    stop, statuses, generations = threading.Event(), [], set()

    def reader():
        i = 0
        while not stop.is_set():
            response = client.get(f"/v1/users/u{i % 50}/homepage")
            statuses.append(response.status_code)
            if response.status_code == 200:
                generations.add(response.json["generation"])
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        second = dag.test(logical_date=datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc))
    finally:
        stop.set()
        thread.join(30)
    assert _state(second) == "success"
    assert statuses and all(code == 200 for code in statuses), sorted(set(statuses))
    assert len(generations) == 2  # the reads saw the old generation, then the new one
    items = gens.list("item")
    assert sum(g.live for g in items) == 1 and len(items) == 2
    assert gens.live_index("item") != live_item and gens.live_index("item") == items[-1].index
    before = (gens.live_index("item"), gens.live_index("user"))

    impossible = tmp_path / "rows.yaml"
    impossible.write_text("rows:\n  - {id: vinyl, title: Vinyl, filter: [{term: {categories: vinyl}}]}\n")
    monkeypatch.setenv("FACETREC_ROWS_CONFIG", str(impossible))
    for t in dag.tasks:  # keep the retries (they run), skip the production 5-minute wait between them
        monkeypatch.setattr(t, "retry_delay", timedelta(seconds=0))
    run = dag.test(logical_date=datetime(2026, 3, 3, 2, 0, tzinfo=timezone.utc))
    assert _state(run) == "failed"
    assert (gens.live_index("item"), gens.live_index("user")) == before
    assert [g.generation for g in gens.list("item")] == [g.generation for g in items]
