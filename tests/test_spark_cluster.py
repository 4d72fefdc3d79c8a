"""The nightly pipeline's Spark steps on a real Spark standalone cluster: a master and two workers on
loopback, started from the installed pyspark's own launcher classes (``ingest.embedding.spark_cluster``).

The executors run a Python that does not have facetrec (``tests/venvs.py``): they import the
project from the code archive the driver ships with the job, as on a real cluster. The cluster
run (``SPARK_MASTER=spark://...``: the ETL, and the publish's bulk load from the executors, partition
by partition) must give what the ``local[2]`` run gives: the same ETL output and data version,
the same ids and counts in the published pair, the same vectors within 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from venvs import bare_venv

from facetrec.es import make_client

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    from ingest.embedding import spark_cluster

    home = tmp_path_factory.mktemp("spark-cluster")
    cluster = spark_cluster.start(workers=2, cores=1, memory="1g", home=home)
    yield cluster
    assert spark_cluster.stop(home) == 3


def _pipeline(work: Path, env: dict, *extra: str) -> dict:
    cli = Path(sys.executable).with_name("facetrec")
    done = subprocess.run([str(cli), "pipeline", "run", "--dataset", "synthetic", "--work-dir", str(work), *extra],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pipeline failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads((work / "pipeline_summary.json").read_text())


def _frame(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    return frame.sort_values(list(frame.columns[:1])).reset_index(drop=True)


def _docs(es, index: str) -> dict[str, dict]:
    hits = es.search(index=index, size=10_000, source={"exclude_vectors": False}, sort=["_doc"])["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def test_the_pipeline_on_a_standalone_cluster_equals_the_local_run(spark_cluster, es, es_settings, unique, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_MASTER", "PYSPARK_PYTHON")}
    env.update(ES_URL=es_settings.es_url, FACETREC_MODELS_ROOT=str(tmp_path / "models"))
    local_env = {**env, "FACETREC_ITEM_ALIAS": f"{unique}-local-item", "FACETREC_USER_ALIAS": f"{unique}-local-user"}
    local = _pipeline(tmp_path / "local", local_env, "--set", "epochs=1")

    # The cluster run trains nothing (Spark does not train): it reuses the local run's model, so any
    # difference below comes from the Spark steps.
    executor_python = bare_venv(tmp_path / "executor-venv")
    work = tmp_path / "cluster"
    work.mkdir()
    for step in ("model", "ranker"):
        shutil.copytree(tmp_path / "local" / step, work / step)
    cluster_env = {**env, "SPARK_MASTER": spark_cluster.master_url, "PYSPARK_PYTHON": str(executor_python),
                   "FACETREC_ITEM_ALIAS": f"{unique}-cluster-item", "FACETREC_USER_ALIAS": f"{unique}-cluster-user"}
    remote = _pipeline(work, cluster_env, "--skip-train")

    # The executors had no facetrec of their own: they ran the archive the driver shipped.
    shipped = sorted(p.name for p in Path(spark_cluster.home).glob("worker-*/app-*/*/facetrec-code-*.zip"))
    assert len(shipped) >= 4, shipped  # the ETL's and the publish's applications, each on both workers

    # ETL: the same counts, data version, vocabulary and rows.
    assert remote["etl"]["data_version"] == local["etl"]["data_version"]
    when = ("seconds", "catalog_read_at")   # when each run read its catalog, and how long it took
    assert {k: v for k, v in remote["etl"].items() if k not in when} == \
        {k: v for k, v in local["etl"].items() if k not in when}
    for name in ("items.parquet", "users.parquet"):
        pd.testing.assert_frame_equal(_frame(work / "etl" / name), _frame(tmp_path / "local" / "etl" / name))
    assert (work / "etl" / "vocab.json").read_text() == (tmp_path / "local" / "etl" / "vocab.json").read_text()

    # The published pairs: loaded by the executors vs by the driver, the same documents.
    assert remote["publish"]["status"] == local["publish"]["status"] == "swapped"
    es = make_client(es_settings, request_timeout=60)
    for family, field in (("item", "item_embed"), ("user", "user_embed")):
        ours = _docs(es, f"{unique}-cluster-{family}")
        theirs = _docs(es, f"{unique}-local-{family}")
        assert len(ours) == len(theirs) == local["publish"]["loaded"][family] == remote["publish"]["loaded"][family]
        assert ours.keys() == theirs.keys()
        ids = sorted(ours)
        mine = np.array([ours[i][field] for i in ids], dtype=np.float64)
        other = np.array([theirs[i][field] for i in ids], dtype=np.float64)
        assert np.abs(mine - other).max() <= 1e-6
        # Everything else equal but the pair's own names and times, and the item vector scale that
        # Spark sums in another order than numpy (the last bit of a double).
        strip = {field, "item_embed_exact", "generation", "item_generation", "updated_at", "item_vector_scale"}
        assert all({k: v for k, v in ours[i].items() if k not in strip} ==
                   {k: v for k, v in theirs[i].items() if k not in strip} for i in ids)
        if family == "user":
            assert all(ours[i]["item_vector_scale"] == pytest.approx(theirs[i]["item_vector_scale"], rel=1e-12)
                       for i in ids)
