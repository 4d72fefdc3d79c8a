"""The SparkSession the pipeline uses: local[2] here, any master in production (SPARK_MASTER).

On a cluster (any master but ``local[...]``) the executors run in other JVMs and Python workers that
need not have the project installed: the session ships the project's code with the job, as one zip
of its packages (``code_archive``) added with ``SparkContext.addPyFile``, the way ``spark-submit
--py-files`` does. The executors' third-party libraries (pyspark, numpy, pyarrow, elasticsearch)
come from their own Python (``PYSPARK_PYTHON``, default: the driver's interpreter path).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import zipfile
from pathlib import Path

from facetrec.settings import PACKAGE_ROOT, STATE_ROOT

SHIPPED_PACKAGES = ("facetrec", "ingest")   # what executors import (the bulk load and what it uses)


def spark_master(master: str | None = None) -> str:
    return master or os.environ.get("SPARK_MASTER", "local[2]")


def on_cluster(master: str | None = None) -> bool:
    """Whether the job's executors run outside the driver's JVM (a standalone, YARN or Kubernetes master)."""
    return not spark_master(master).startswith("local")


def code_archive(dest: Path | None = None) -> Path:
    """The project's packages as the driver runs them (from the checkout or an installed wheel), in
    one zip named by a hash of its contents: the same code gives the same file, built once."""
    files = sorted(path for package in SHIPPED_PACKAGES for path in (PACKAGE_ROOT / package).rglob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes())
    dest = Path(dest or STATE_ROOT / "spark")
    archive = dest / f"facetrec-code-{digest.hexdigest()[:16]}.zip"
    if not archive.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(f".{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, str(path.relative_to(PACKAGE_ROOT)))
        tmp.replace(archive)
    return archive


@contextlib.contextmanager
def spark_session(app_name: str):
    """The active SparkSession if a caller owns one (it is left running), else a new one, stopped after."""
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    spark = existing or make_spark_session(app_name)
    try:
        yield spark
    finally:
        if existing is None:  # never stop a session someone else owns
            spark.stop()


def make_spark_session(app_name: str = "facetrec", master: str | None = None):
    from pyspark.sql import SparkSession

    # py4j logs its connection chatter at INFO, also from interpreter shutdown, when a host's log
    # handlers (pytest's capture, Airflow's task log) may already be closed: a "Logging error"
    # traceback at the end of every run. Its warnings and errors still come through.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    os.environ["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON") or sys.executable   # the executors' Python
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name)
               .master(spark_master(master))
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "8")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "2g"))
               .config("spark.ui.showConsoleProgress", "false"))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    if on_cluster(master):
        session.sparkContext.addPyFile(str(code_archive()))
    return session
